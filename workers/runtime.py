"""What actors need besides their session: settings, the broker, provider clients.

Set once by workers/app.py at boot (or by tests), read by actors.
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq

from shared.config import Settings
from shared.providers.embeddings.base import EmbeddingsProvider
from shared.providers.registry import build_embeddings


@dataclass
class Runtime:
    settings: Settings
    broker: dramatiq.Broker
    _embeddings: EmbeddingsProvider | None = None

    @property
    def embeddings(self) -> EmbeddingsProvider:
        """Built on first use: only the memory actor needs a model in memory."""
        if self._embeddings is None:
            self._embeddings = build_embeddings(self.settings)
        return self._embeddings


_runtime: Runtime | None = None


def configure(settings: Settings, broker: dramatiq.Broker) -> Runtime:
    global _runtime  # noqa: PLW0603 - set once per process at boot
    _runtime = Runtime(settings=settings, broker=broker)
    return _runtime


def current() -> Runtime:
    if _runtime is None:
        raise RuntimeError("workers.runtime.configure() has not been called")
    return _runtime
