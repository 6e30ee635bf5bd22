"""Background workers of a stream (a reader, a keep-alive, a watchdog): greenlets in the
gevent processes, daemon threads elsewhere (tests, scripts, the Dramatiq worker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol


class Worker(Protocol):
    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class _GreenletWorker:
    def __init__(self, greenlet: Any) -> None:
        self._greenlet = greenlet

    def join(self, timeout: float | None = None) -> None:
        self._greenlet.join(timeout)

    def is_alive(self) -> bool:
        return not self._greenlet.dead


def start_worker(target: Callable[[], None], name: str) -> Worker:
    """Run `target` in the background. Where gevent has patched threading (the voice and
    web processes) a plain greenlet rather than a patched Thread: a call runs half a dozen
    of these for its whole length, and a greenlet is 7 objects for the garbage collector
    to walk against a patched Thread's 34, in every full collection, with every call's
    audio waiting (docs/voice-benchmark-log.md). Elsewhere a daemon thread."""
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        import gevent

        greenlet = gevent.spawn(target)
        greenlet.name = name
        return _GreenletWorker(greenlet)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
