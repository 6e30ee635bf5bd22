"""One thread that reads, times and paces audio for any number of fake Telnyx calls.

Threads per call are what make a fake phone expensive. Measured on the 2-core VM, CPU of the
fake's process while each call streams 20 ms caller frames in real time for 5 s:

| client                                   | 50 calls, send only | + 100 ms agent chunks | + 20 ms frame back |
|------------------------------------------|---------------------|-----------------------|--------------------|
| websockets sync client, thread per call  | 18% of a core       | —                     | 47%                |
| simple_websocket.Client, thread per call | 18%                 | —                     | —                  |
| this loop, one MediaLoop per call        | 18%                 | 33%                   | 46%                |
| this loop, shared by all calls           | 5.5%                | 9.7%                  | 18%                |

200 calls on the shared loop: 23% (send only), 33% (100 ms chunks). 200 threads instead
fell 0.2-1.2 s behind their 20 ms schedule. So every socket, timer and tick runs here.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

TICK = 0.020  # one 20 ms media frame


class Ticker(Protocol):
    """Something that sends one frame per tick while it has anything to send."""

    def on_tick(self, due: float, now: float) -> bool:
        """Send the frame scheduled at `due`; return False when there is nothing more."""
        ...


class MediaLoop:
    """A selector loop with timers and a shared 20 ms tick, on its own daemon thread."""

    def __init__(self, tick: float = TICK, phases: int = 1) -> None:
        self.tick = tick
        # Tickers are dealt round-robin to `phases` slots spread evenly over the tick, so
        # their frames leave at `phases` instants of each 20 ms rather than in one burst
        # (real Telnyx streams each keep the phase their call started on).
        self.phases = max(1, phases)
        self._phase = 0  # the slot whose tick is due next
        self._dealt = itertools.count()
        self._phase_of: dict[Ticker, int] = {}
        self.max_lateness = 0.0  # worst delay of a tick behind its schedule, in seconds
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._todo: list[Callable[[], None]] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._order = itertools.count()
        # Per phase slot, each ticker maps to the generation of its latest want_ticks, so a
        # ticker that asks again while the loop is dropping it for having had nothing to
        # send is kept. (One dict for all slots, filtered by phase at each slot, cost the
        # phones ~3.5 % of their CPU at 200 calls.)
        self._tickers: list[dict[Ticker, int]] = [{} for _ in range(self.phases)]
        self._tick_due: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="telnyx-media-loop", daemon=True)
        self._thread.start()

    def attach(self, sock: socket.socket, on_readable: Callable[[], None]) -> None:
        """Call `on_readable()` on the loop thread whenever `sock` has data."""
        if self._closed:
            raise RuntimeError("the MediaLoop is closed")
        self.run(lambda: self._sel.register(sock, selectors.EVENT_READ, on_readable))

    def detach(self, sock: socket.socket) -> None:
        """Stop watching `sock` (before it is closed, so its descriptor can be reused)."""

        def unregister() -> None:
            if not self._closed and _registered(self._sel, sock):
                self._sel.unregister(sock)

        self.run(unregister)

    def call_at(self, due: float, fn: Callable[[float], None]) -> None:
        """Run `fn(now)` on the loop thread at monotonic time `due`."""
        with self._lock:
            heapq.heappush(self._timers, (due, next(self._order), fn))
        self._wake()

    def want_ticks(self, ticker: Ticker) -> None:
        """Tick `ticker` every 20 ms, from the next tick on, until it returns False."""
        with self._lock:
            if not self._ticking:
                self._tick_due, self._phase = time.monotonic(), 0
            if ticker not in self._phase_of:
                self._phase_of[ticker] = next(self._dealt) % self.phases
            self._tickers[self._phase_of[ticker]][ticker] = next(self._order)
        self._wake()

    @property
    def _ticking(self) -> bool:
        return any(self._tickers)

    def run(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on the loop thread and wait for it (directly if already there)."""
        if self._closed or threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()
        failure: list[BaseException] = []

        def task() -> None:
            try:
                fn()
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        with self._lock:
            queued = not self._closed
            if queued:
                self._todo.append(task)
        if not queued:
            task()  # closed meanwhile: nothing else will run it
        self._wake()
        done.wait()
        if failure:
            raise failure[0]

    @property
    def closed(self) -> bool:
        """True once `close()` has been called."""
        return self._closed

    def close(self) -> None:
        """Stop the thread; the sockets it watched are left to their owners."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._run_todo()  # release anyone still waiting in run()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> MediaLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        if threading.current_thread() is self._thread:
            return
        with contextlib.suppress(OSError):  # a wake-up is already pending, or loop closed
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._sel.select(self._timeout()):
                if key.data is None:
                    self._drain_wake()
                else:
                    _guarded(key.data)
            self._run_todo()
            now = time.monotonic()
            self._run_timers(now)
            self._run_tick(now)

    def _timeout(self) -> float:
        with self._lock:
            if self._todo:
                return 0.0
            due = [self._timers[0][0]] if self._timers else []
            if self._ticking and self._tick_due is not None:
                due.append(self._tick_due)
        return max(0.0, min(due) - time.monotonic()) if due else 1.0

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_todo(self) -> None:
        with self._lock:
            todo, self._todo = self._todo, []
        for fn in todo:
            _guarded(fn)

    def _run_timers(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, fn = heapq.heappop(self._timers)
            _guarded(functools.partial(fn, now))

    def _run_tick(self, now: float) -> None:
        with self._lock:
            due = self._tick_due
            if due is None or not self._ticking or now < due:
                return
            slot = self._tickers[self._phase]
            tickers = list(slot.items())
            # Slot k is t0 + k*tick/phases: a late tick is caught up next turn, never re-based.
            self._tick_due = due + self.tick / self.phases
            self._phase = (self._phase + 1) % self.phases
        self.max_lateness = max(self.max_lateness, now - due)
        finished = [(t, gen) for t, gen in tickers if not _tick(t, due, now)]
        if finished:
            with self._lock:
                for ticker, gen in finished:
                    if slot.get(ticker) == gen:
                        del slot[ticker]
                        del self._phase_of[ticker]


def _registered(sel: selectors.BaseSelector, sock: socket.socket) -> bool:
    try:
        sel.get_key(sock)
    except (KeyError, ValueError):
        return False
    return True


def _tick(ticker: Ticker, due: float, now: float) -> bool:
    try:
        return ticker.on_tick(due, now)
    except Exception:
        log.exception("fake call tick failed")
        return False


def _guarded(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        log.exception("fake call handler failed")


_shared: dict[str, MediaLoop] = {}
_shared_lock = threading.Lock()


def shared_loop() -> MediaLoop:
    """The process-wide loop calls run on unless given their own (started on first use)."""
    with _shared_lock:
        loop = _shared.get("loop")
        if loop is None or loop.closed:
            loop = _shared["loop"] = MediaLoop()
        return loop
