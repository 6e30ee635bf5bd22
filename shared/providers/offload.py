"""CPU-heavy model work (Whisper, Piper, MiniLM) off the gevent hub.

onnxruntime, CTranslate2 and numpy release the GIL, so running them in a thread of their
own keeps every other call's audio flowing meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MODEL_SLOTS = 1  # model jobs at once in a gevent process (see off_hub)
MODEL_NICE = 19  # the model threads' nice value: the hub's thread comes first (see off_hub)

_pools: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # hub -> pool
_niced = threading.local()


def off_hub(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a model thread when this OS thread runs a gevent hub (greenlets keep
    running meanwhile); on plain threads and threadpool workers, right here.

    At most `MODEL_SLOTS` such jobs run at once; the others wait their turn, without
    blocking the hub. A model thread shares the core with the hub that carries every
    call's audio: when Cartesia failed under load in the voice benchmark and every call
    fell back to Piper, ten synthesis threads (the pool's size) took nearly all of it and
    the audio of every call stalled. Queued, a fallback voice answers later instead.

    And the model thread runs at nice `MODEL_NICE`: even one, runnable beside the hub on
    the same core, took half of it (the kernel shares a core evenly between two busy
    threads), so a few calls on the fallback voice halved the hub's CPU for the other calls
    (py-spy at 200 calls: Piper 11 % of the worker's samples after a few Cartesia
    timeouts). At nice 19 it gets the core's idle time, and ~1.5 % when the hub wants it
    all: under load a fallback voice answers later, the other calls' audio keeps time.
    Threads the models start (onnxruntime's, CTranslate2's) inherit it when the model is
    loaded here."""
    # Private but stable since gevent 20: the public get_hub() would create a hub.
    from gevent._hub_local import get_hub_if_exists

    hub = get_hub_if_exists()
    if hub is None:
        return fn(*args)
    return _model_pool(hub).spawn(_niced_call, fn, *args).get()


def _model_pool(hub: Any) -> Any:
    """The hub's own pool of `MODEL_SLOTS` threads for model jobs (a full pool makes the
    spawning greenlet wait its turn). Not the hub's threadpool: its threads also resolve
    names and run other blocking calls, which must not inherit the low priority."""
    pool = _pools.get(hub)
    if pool is None:
        from gevent.threadpool import ThreadPool

        pool = _pools[hub] = ThreadPool(MODEL_SLOTS, hub=hub)
    return pool


def _niced_call(fn: Callable[..., T], *args: Any) -> T:
    if not getattr(_niced, "done", False):
        _niced.done = True
        _lower_priority()
    return fn(*args)


def _lower_priority() -> None:
    """This thread's nice value to `MODEL_NICE` (Linux sets it per thread; raising it
    needs no privilege). Elsewhere, or where it is refused, the thread stays as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MODEL_NICE)
    except (AttributeError, OSError) as exc:
        log.info("model thread keeps its priority: %r", exc)


def native_lock() -> Any:
    """A real OS-thread lock even under monkey-patching: model loads may run in a model
    thread, where a gevent lock would not do."""
    from gevent.monkey import get_original

    return get_original("_thread", "allocate_lock")()
