"""Actor families, one module each. Importing this package registers them all."""

from workers.actors import crm, post_call, telephony  # noqa: F401
