"""Actor families, one module each. Importing this package registers them all."""

from workers.actors import maintenance  # noqa: F401
