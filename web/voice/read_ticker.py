"""One timer serves every call's media socket, every `TICK_S`: a pump greenlet reads the
sockets that have data and hands each message to its call's handler.

Why not gevent's own wait: each call's reader waits on its socket's read watcher, so each
20 ms Telnyx frame of each call costs a turn of the event loop (an epoll_wait, libev's
prepare and check watchers), a watcher stopped and started, and gevent's socket wrapper:
~35 µs of CPU a frame, the largest share of an open line's cost (README: voice benchmark).
Here one plain epoll set holds the media sockets and a repeating hub timer asks it, with no
wait, which are readable: one epoll_wait per tick for all the calls. A frame waits at most
one tick longer before it is read.

Two ways to be served, per socket:
- `pump(fileno, read)`: the ticker's one pump greenlet calls `read()` for each readable
  socket in turn, so a frame costs no greenlet switch at all (the reader greenlets cost a
  switch there and back per frame: 15 -> 10.5 µs a frame read at 200 sockets, README). The
  price: `read()` must never wait, since every pumped call waits behind it. `MediaSocket`
  pumps only whole data frames, to a handler that only parses and hands audio on (the
  Deepgram stream's sends have a worker of their own for this); anything else (control
  frames, the end of the stream, a handler's verdict) hands the socket back to its reader.
- `readable(fileno)`: a `wait()` for the call's own reader greenlet, woken from the timer
  (the slow path: the start of the stream, control frames, closing). A reader that blocks
  (a write lock, say) holds up only its own call.

gevent has no public API for this (its watchers are per socket), hence the hand-made part:
the unpatched `select.epoll` (gevent's monkey-patching hides it) and gevent's `Waiter`, its
documented low-level hand-off from the hub to one greenlet.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.hub import Waiter

log = logging.getLogger(__name__)
TICK_S = 0.002
LATE_S = 0.004  # no round for this long: a checkpoint runs one (`catch_up`)


def read_ticker(tick_s: float = TICK_S) -> ReadTicker | None:
    """A ticker, or None without epoll (not Linux): the readers then wait on their own."""
    try:
        monkey.get_original("select", "epoll")
    except AttributeError:
        return None
    return ReadTicker(tick_s)


class _Socket:
    """One socket's registration: its reader's waiter, and while it is pumped, its `read`
    and the waiter of the greenlet that handed it to the pump."""

    __slots__ = ("fileno", "forgotten", "handed_back", "read", "waiter")

    def __init__(self, fileno: int) -> None:
        self.fileno = fileno
        self.waiter = Waiter()
        self.read: Callable[[], bool] | None = None
        self.handed_back = Waiter()
        self.forgotten = False


class ReadTicker:
    """Readiness for many sockets from one timer (one per voice process, on its hub)."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        epoll = monkey.get_original("select", "epoll")
        self._epoll = epoll()  # sockets whose own reader waits
        self._pump_epoll = epoll()  # sockets the pump reads
        self._tick_s = tick_s
        self._sockets: dict[int, _Socket] = {}
        self._waiting: dict[int, _Socket] = {}
        self._pumped: dict[int, _Socket] = {}
        self._pump_wake = Waiter()
        self._pump: gevent.Greenlet | None = None
        self._round_at = 0.0  # when the last pump round began
        self._in_round = False
        self._timer: Any = None  # running while any socket is registered

    def readable(self, fileno: int) -> Callable[[], None]:
        """A `wait()` for the reader of `fileno`: returns once the socket has data (or
        has had, since the last wait: a tick may come while the reader is busy; the read
        that follows then finds the data, or waits for it on the socket as usual)."""
        sock = self._sockets[fileno] = _Socket(fileno)

        def wait() -> None:
            if sock.forgotten:
                return  # the read waits on the socket's own watcher
            if self._waiting.get(fileno) is not sock:
                self._watch(sock, self._epoll, self._waiting)
            sock.waiter.get()
            sock.waiter.clear()

        return wait

    def pump(self, fileno: int, read: Callable[[], bool]) -> None:
        """From the reader of `fileno` (after `readable`): have the pump call `read()`
        whenever the socket has data, until `read` returns False or raises, or the socket
        is forgotten; then return. `read` runs in the pump's greenlet and must not wait."""
        sock = self._sockets.get(fileno)
        if sock is None or sock.forgotten:
            return
        if self._waiting.pop(fileno, None) is not None:
            _unregister(self._epoll, fileno)
        sock.read = read
        self._watch(sock, self._pump_epoll, self._pumped)
        if self._pump is None or self._pump.dead:
            self._pump = gevent.spawn(self._run_pump)
        try:
            sock.handed_back.get()
        finally:
            sock.handed_back.clear()
            self._unpump(sock)

    def forget(self, fileno: int) -> None:
        """The socket is done (call before it is closed): no more ticks for it. A reader
        still waiting is woken, to read on its own from then on."""
        sock = self._sockets.pop(fileno, None)
        if sock is None:
            return
        sock.forgotten = True
        loop = gevent.get_hub().loop
        if self._waiting.pop(fileno, None) is not None:
            _unregister(self._epoll, fileno)
            if sock.waiter.greenlet is not None:
                loop.run_callback(sock.waiter.switch, None)
        if self._unpump(sock) and sock.handed_back.greenlet is not None:
            loop.run_callback(sock.handed_back.switch, None)
        if not self._waiting and not self._pumped and self._timer is not None:
            self._timer.stop()

    @property
    def watched(self) -> int:
        return len(self._waiting) + len(self._pumped)

    def _watch(self, sock: _Socket, epoll: Any, into: dict[int, _Socket]) -> None:
        try:
            epoll.register(sock.fileno, select.EPOLLIN)
        except FileExistsError:  # a socket that was never forgotten, its number reused
            epoll.modify(sock.fileno, select.EPOLLIN)
        into[sock.fileno] = sock
        if self._timer is None:
            # ref=False: the ticker alone does not keep the event loop running.
            self._timer = gevent.get_hub().loop.timer(self._tick_s, self._tick_s, ref=False)
        if not self._timer.active:
            self._timer.start(self._tick)

    def _unpump(self, sock: _Socket) -> bool:
        """Stop pumping `sock`; False if it was not pumped."""
        sock.read = None
        if self._pumped.get(sock.fileno) is not sock:
            return False
        del self._pumped[sock.fileno]
        _unregister(self._pump_epoll, sock.fileno)
        return True

    def _tick(self) -> None:
        """In the hub: wake the reader of each waiting socket that has data, and the pump."""
        if waiting := self._waiting:
            for fileno, _ in self._epoll.poll(0):
                sock = waiting.get(fileno)  # a reader switched to just now may have closed
                if sock is not None:
                    sock.waiter.switch(None)
        if self._pumped and self._pump_wake.greenlet is not None:
            self._pump_wake.switch(None)

    def catch_up(self, late_s: float = LATE_S) -> None:
        """At a checkpoint of bulk work (shared/realtime.py), in whichever greenlet: run a
        pump round now if none began in the last `late_s`. The tick's own round waits for
        the event loop's turn, which under load runs hundreds of greenlets first; a round
        never waits, so it can run anywhere but inside another round."""
        if self._pumped and not self._in_round and time.monotonic() - self._round_at >= late_s:
            self._round()

    def _run_pump(self) -> None:
        """The pump's greenlet: a round each tick."""
        while True:
            self._pump_wake.get()
            self._pump_wake.clear()
            self._round()

    def _round(self) -> None:
        """`read()` every pumped socket that has data; a socket whose `read` is done goes
        back to the greenlet that handed it over."""
        self._in_round, self._round_at = True, time.monotonic()
        try:
            for fileno, _ in self._pump_epoll.poll(0):
                sock = self._pumped.get(fileno)
                if sock is None or sock.read is None:
                    continue
                try:
                    more = sock.read()
                except Exception:  # read() reports its own failures; this is a defect
                    log.exception("media pump: read failed")
                    more = False
                if not more and self._unpump(sock):
                    gevent.get_hub().loop.run_callback(sock.handed_back.switch, None)
        finally:
            self._in_round = False


def _unregister(epoll: Any, fileno: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        epoll.unregister(fileno)
