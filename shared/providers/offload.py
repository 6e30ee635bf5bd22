"""CPU-heavy model work (Whisper, Piper, MiniLM) off the gevent hub.

onnxruntime, CTranslate2 and numpy release the GIL, so running them on the hub's
threadpool keeps every other call's audio flowing meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def off_hub(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in gevent's threadpool when this OS thread runs a gevent hub (greenlets
    keep running meanwhile); on plain threads and threadpool workers, right here."""
    # Private but stable since gevent 20: the public get_hub() would create a hub.
    from gevent._hub_local import get_hub_if_exists

    hub = get_hub_if_exists()
    if hub is None:
        return fn(*args)
    return hub.threadpool.spawn(fn, *args).get()


def native_lock() -> Any:
    """A real OS-thread lock even under monkey-patching: model loads may run on the hub's
    threadpool, where a gevent lock would not do."""
    from gevent.monkey import get_original

    return get_original("_thread", "allocate_lock")()
