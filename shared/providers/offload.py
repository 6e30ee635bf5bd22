"""CPU-heavy model work (Whisper, Piper, MiniLM) off the gevent hub.

onnxruntime, CTranslate2 and numpy release the GIL, so running them on the hub's
threadpool keeps every other call's audio flowing meanwhile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


MODEL_SLOTS = 1  # model jobs at once in a gevent process (see off_hub)


def off_hub(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in gevent's threadpool when this OS thread runs a gevent hub (greenlets
    keep running meanwhile); on plain threads and threadpool workers, right here.

    At most `MODEL_SLOTS` such jobs run at once; the others wait their turn, without
    blocking the hub. A model thread shares the core with the hub that carries every
    call's audio: when Cartesia failed under load in the voice benchmark and every call
    fell back to Piper, ten synthesis threads (the pool's size) took nearly all of it and
    the audio of every call stalled. Queued, a fallback voice answers later instead."""
    # Private but stable since gevent 20: the public get_hub() would create a hub.
    from gevent._hub_local import get_hub_if_exists

    hub = get_hub_if_exists()
    if hub is None:
        return fn(*args)
    with _model_slots():
        return hub.threadpool.spawn(fn, *args).get()


@functools.cache
def _model_slots() -> Any:
    from gevent.lock import BoundedSemaphore

    return BoundedSemaphore(MODEL_SLOTS)


def native_lock() -> Any:
    """A real OS-thread lock even under monkey-patching: model loads may run on the hub's
    threadpool, where a gevent lock would not do."""
    from gevent.monkey import get_original

    return get_original("_thread", "allocate_lock")()
