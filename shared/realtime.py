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

import time
from collections.abc import Callable
from typing import Protocol

import gevent
import gevent.local


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


class _ReadPace(gevent.local.local):
    """Per greenlet (so per thread too, each has its own main greenlet; gevent's own class
    rather than a patched `threading.local`, whatever the order of imports and patching):
    how long a provider socket's reads are spaced, and when the last one was."""

    seconds = 0.0
    last = 0.0


_read_pace = _ReadPace()


def pace_reads(seconds: float) -> None:
    """From now on, this greenlet's provider reads (`before_read`) come at most once every
    `seconds`, counted from now (0: as soon as data is there, the default).

    For a stream whose pieces are no longer urgent: an LLM reply once its first sentence
    is with the TTS, whose audio plays for longer than the pause. Each read of a streamed
    HTTP response that waits costs a wake-up (a watcher, two switches, httpcore's read
    path) for each token; read after a pause, the tokens that came meanwhile are taken in
    one read: 4.5 -> 2.7 ms of CPU per 20-token Groq reply at 0.08 s (a gevent process,
    20 replies at once, the fake Groq sending a token every 10 ms)."""
    _read_pace.seconds, _read_pace.last = seconds, time.monotonic()


def before_read() -> None:
    """Before a provider socket's read: wait out this greenlet's read pace, if it has one."""
    pace = _read_pace.seconds
    if pace <= 0:
        return
    wait = _read_pace.last + pace - time.monotonic()
    if wait > 0:
        gevent.sleep(wait)
    _read_pace.last = time.monotonic()
