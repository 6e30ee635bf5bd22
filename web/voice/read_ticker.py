"""One timer wakes every call's media reader that has data waiting, every `TICK_S`.

Why not gevent's own wait: each call's reader waits on its socket's read watcher, so each
20 ms Telnyx frame of each call costs a turn of the event loop (an epoll_wait, libev's
prepare and check watchers), a watcher stopped and started, and gevent's socket wrapper:
~35 µs of CPU a frame, the largest share of an open line's cost (README: voice benchmark).
Here one plain epoll set holds every media socket, and a repeating hub timer asks it, with
no wait, which are readable, then switches to those readers one after another: one
epoll_wait per tick for all the calls. With 200 sockets at 50 frames a second each the
micro-benchmark measured 16.6 µs a frame against 35.8 µs (2 ms ticks). A frame waits at
most one tick longer before it is read.

Each reader still reads and handles its frames in its own greenlet, so a reader that
blocks (a full send buffer towards Deepgram, a write lock) holds up only its own call: the
switch returns to the timer's callback, which goes on to the next socket.

gevent has no public API for this (its watchers are per socket), hence the hand-made
part: the unpatched `select.epoll` (gevent's monkey-patching hides it) and gevent's
`Waiter`, its documented low-level hand-off from the hub to one greenlet.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.hub import Waiter

TICK_S = 0.002


def read_ticker(tick_s: float = TICK_S) -> ReadTicker | None:
    """A ticker, or None without epoll (not Linux): the readers then wait on their own."""
    try:
        monkey.get_original("select", "epoll")
    except AttributeError:
        return None
    return ReadTicker(tick_s)


class ReadTicker:
    """Readiness for many sockets from one timer (one per voice process, on its hub)."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        epoll = monkey.get_original("select", "epoll")
        self._epoll = epoll()
        self._tick_s = tick_s
        self._waiters: dict[int, Waiter] = {}
        self._timer: Any = None  # running while any socket is registered

    def readable(self, fileno: int) -> Callable[[], None]:
        """A `wait()` for the reader of `fileno`: returns once the socket has data (or
        has had, since the last wait: a tick may come while the reader is busy; the read
        that follows then finds the data, or waits for it on the socket as usual)."""
        waiter = Waiter()
        registered = False

        def wait() -> None:
            nonlocal registered
            if not registered:  # on the first wait: before it, the reader reads itself
                self._register(fileno, waiter)
                registered = True
            elif self._waiters.get(fileno) is not waiter:
                return  # forgotten: the read waits on the socket's own watcher
            waiter.get()
            waiter.clear()

        return wait

    def forget(self, fileno: int) -> None:
        """The socket is done (call before it is closed): no more ticks for it. A reader
        still waiting is woken, to read on its own from then on."""
        waiter = self._waiters.pop(fileno, None)
        if waiter is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fileno)
        if waiter.greenlet is not None:
            gevent.get_hub().loop.run_callback(waiter.switch, None)
        if not self._waiters and self._timer is not None:
            self._timer.stop()

    @property
    def watched(self) -> int:
        return len(self._waiters)

    def _register(self, fileno: int, waiter: Waiter) -> None:
        try:
            self._epoll.register(fileno, select.EPOLLIN)
        except FileExistsError:  # a socket that was never forgotten, its number reused
            self._epoll.modify(fileno, select.EPOLLIN)
        self._waiters[fileno] = waiter
        if self._timer is None:
            # ref=False: the ticker alone does not keep the event loop running.
            self._timer = gevent.get_hub().loop.timer(self._tick_s, self._tick_s, ref=False)
        if not self._timer.active:
            self._timer.start(self._tick)

    def _tick(self) -> None:
        """In the hub: wake the reader of each socket that has data."""
        waiters = self._waiters
        for fileno, _ in self._epoll.poll(0):
            waiter = waiters.get(fileno)  # a reader switched to just now may have closed
            if waiter is not None:
                waiter.switch(None)
