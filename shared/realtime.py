"""Checkpoints: where the voice process's bulk work lets the callers' audio in first.

The voice process is one gevent event loop. Its callers' inbound frames are read by one
pump greenlet on a 2 ms timer (web/voice/read_ticker.py), but a timer fires only between
two turns of the loop, and under load one turn runs every greenlet that became ready
during the last: measured at 200 calls (the benchmark's `--account-calls` stall account),
151 gaps of 15-48 ms between two runs of the pump in 20 s, ~240 greenlet runs each
(replies, TTS audio, Deepgram sends, playout), and every call's frames waited through them.

gevent has no priorities among greenlets, so the long-running loops of that bulk work call
`checkpoint()` between their units (an LLM chunk, a TTS message, an outbound chunk, a
Deepgram message). The voice process registers its ticker's `catch_up`, which runs an
overdue pump round right there, in the calling greenlet. Anywhere else (the web and
background processes, tests, scripts) nothing is registered and a checkpoint does nothing.

A checkpoint must only be placed where the caller's state is consistent and no lock is
held: the pump's handlers may, for example, record a mark on the call's playout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class _Registered:
    catch_up: Callable[[], None] | None = None


_registered = _Registered()


def register(catch_up: Callable[[], None] | None) -> None:
    """Run `catch_up` at every checkpoint of this process (None: nothing)."""
    _registered.catch_up = catch_up


def checkpoint() -> None:
    """Between two units of bulk work: let overdue real-time work run now."""
    if (catch_up := _registered.catch_up) is not None:
        catch_up()


class _Lock(Protocol):
    def locked(self) -> bool: ...

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...


def acquire_now(lock: _Lock) -> bool:
    """Take `lock` if it is free, without waiting: for the read ticker's pump, which must
    never wait. Why not `lock.acquire(blocking=False)` alone: a threading.Lock patched by
    gevent yields to the event loop when that fails (gevent.sleep(), so spin locks work,
    gevent#1464), i.e. the pump would stop in mid-round whenever a call's socket was being
    written. Greenlets switch only when they wait, so a lock seen free here is taken."""
    return not lock.locked() and lock.acquire(blocking=False)
