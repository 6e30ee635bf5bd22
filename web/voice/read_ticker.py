"""One timer serves every call's media socket, every `TICK_S`: a pump greenlet reads the
sockets that have data and hands each message to its call's handler.

Why not gevent's own wait: each call's reader waits on its socket's read watcher, so each
20 ms Telnyx frame of each call costs a turn of the event loop (an epoll_wait, libev's
prepare and check watchers), a watcher stopped and started, and gevent's socket wrapper:
~35 µs of CPU a frame, the largest share of an open line's cost (docs/voice-benchmark-log.md).
Here one plain epoll set holds the media sockets and a repeating hub timer asks it, with no
wait, which are readable: one epoll_wait per tick for all the calls. A frame waits at most
one tick longer before it is read.

Two ways to be served, per socket:
- `pump(fileno, read)`: the ticker's one pump greenlet calls `read()` for each readable
  socket in turn, so a frame costs no greenlet switch at all (the reader greenlets cost a
  switch there and back per frame: 15 -> 10.5 µs a frame read at 200 sockets, see
  docs/voice-benchmark-log.md). The price: `read()` must never wait, since every pumped
  call waits behind it. `MediaSocket` pumps only whole data frames, to a handler that only
  parses and hands audio on (the Deepgram stream's sends have a worker of their own for
  this); anything else (control frames, the end of the stream, a handler's verdict) hands
  the socket back to its reader.
- `readable(fileno)`: a `wait()` for the call's own reader greenlet, woken from the timer
  (the slow path: the start of the stream, control frames, closing). A reader that blocks
  (a write lock, say) holds up only its own call.
- `at(when, step)`: `step()` in the first pump round at or after `when`, after the round's
  reads: the calls' playout pacers (shared/voice/playout.py), so agent audio goes out with
  the same priority as the callers' audio comes in, and a chunk costs no greenlet wake-up
  (a timer, two switches). Like `read()`, a step must never wait.

- `TickerSelector`: a `selectors` selector on the ticker, for the provider sockets. The
  Deepgram and Cartesia SDKs talk over websockets' sync client, whose reader thread (a
  greenlet here) waits for every message in a `selectors.DefaultSelector().select()`:
  gevent's emulation starts and stops a libev watcher and passes an Event per select. A
  message cost ~180 µs of CPU, ~145 µs with this selector (100 connections, a message
  each every 50 ms: scripts/bench/provider_read.py), ~650 messages a second at 100 calls.
  `wait_provider_sockets(ticker)` has websockets' sync connections use it.
- Pumped provider reads: a connection whose messages go to a handler
  (`shared.providers.messages.deliver_messages`) registers `PumpedReads` for its socket;
  its reader's `select()` then hands the socket to the pump, which reads it and hands each
  whole data frame to the handler with no greenlet switch (the reader's wake-up, select,
  locks and websockets' loop cost ~25 of the ~35 µs a message took). Whatever the pump
  does not handle (a control frame, a partial frame, the end) is left for websockets' own
  loop, which `select()` then returns to.

gevent has no public API for this (its watchers are per socket), hence the hand-made part:
the unpatched `select.epoll` (gevent's monkey-patching hides it) and gevent's `Waiter`, its
documented low-level hand-off from the hub to one greenlet.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import select
import selectors
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import gevent
from gevent import monkey
from gevent.hub import Waiter
from websockets.sync import connection as websockets_connection

from shared.modules import with_names
from shared.providers import messages

log = logging.getLogger(__name__)
TICK_S = 0.002
LATE_S = 0.004  # no round for this long: a checkpoint runs one (`catch_up`)
# Called as each pump round begins, if set: the benchmark's worker hooks time the gaps
# between rounds (compiled, shared/native.py, the class takes no patch).
round_hook: Callable[[], None] | None = None


def read_ticker(tick_s: float = TICK_S) -> ReadTicker | None:
    """A ticker, or None without epoll (not Linux): the readers then wait on their own."""
    try:
        monkey.get_original("select", "epoll")
    except AttributeError:
        return None
    return ReadTicker(tick_s)


class _Waiting(Protocol):
    """A file whose waiter the tick wakes while it is readable."""

    fileno: int

    def ready(self, fileno: int) -> None:
        """In the hub, at a tick that found the file readable."""


class PumpedReads(Protocol):
    """A provider socket that the pump reads for its TickerSelector (see the module
    docstring; shared.providers.messages)."""

    fileno: int

    def can_pump(self) -> bool:
        """Whether the pump may read it now (else websockets' own loop reads next)."""

    def read(self) -> bool:
        """In the pump: read what has arrived and hand on the whole data frames; False to
        hand the socket back to websockets' loop. Never waits."""


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

    def ready(self, fileno: int) -> None:
        self.waiter.switch(None)


class ReadTicker:
    """Readiness for many sockets from one timer (one per voice process, on its hub)."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        epoll = monkey.get_original("select", "epoll")
        self._epoll = epoll()  # sockets whose own reader waits
        self._pump_epoll = epoll()  # sockets the pump reads
        self._tick_s = tick_s
        self._sockets: dict[int, _Socket] = {}
        self._waiting: dict[int, _Waiting] = {}
        self._pumped: dict[int, _Socket] = {}
        self._steps: list[tuple[float, int, Callable[[], None]]] = []  # a heap, by time
        self._order = itertools.count()  # ties in time run in the order they were asked
        self._pump_wake = Waiter()
        self._pump: gevent.Greenlet | None = None
        self._round_at = 0.0  # when the last pump round began
        self._in_round = False
        self._timer: Any = None  # running while any socket is registered
        self._selector_pumps: dict[int, PumpedReads] = {}  # by file number

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
        if self._waiting.get(fileno) is sock:
            del self._waiting[fileno]
            _unregister(self._epoll, fileno)
        sock.read = read
        self._watch(sock, self._pump_epoll, self._pumped)
        self._start_pump()
        try:
            sock.handed_back.get()
        finally:
            sock.handed_back.clear()
            self._unpump(sock)

    def at(self, when: float, step: Callable[[], None]) -> None:
        """Run `step()` in the pump's greenlet, in the first round at or after `when` (on
        `time.monotonic()`), after the round's reads. It must never wait. A step asked for
        while the steps run waits for the next round, so a step that asks again at once
        cannot hold the round."""
        heapq.heappush(self._steps, (when, next(self._order), step))
        self._start_timer()
        self._start_pump()

    def forget(self, fileno: int) -> None:
        """The socket is done (call before it is closed): no more ticks for it. A reader
        still waiting is woken, to read on its own from then on."""
        sock = self._sockets.pop(fileno, None)
        if sock is None:
            return
        sock.forgotten = True
        loop = gevent.get_hub().loop
        if self._waiting.get(fileno) is sock:
            del self._waiting[fileno]
            _unregister(self._epoll, fileno)
            if sock.waiter.greenlet is not None:
                loop.run_callback(sock.waiter.switch, None)
        if self._unpump(sock) and sock.handed_back.greenlet is not None:
            loop.run_callback(sock.handed_back.switch, None)
        self._stop_if_idle()

    def pump_reads(self, reads: PumpedReads) -> None:
        """From now on the TickerSelector that waits for `reads.fileno` has the pump read it
        through `reads` (TickerSelector.select)."""
        self._selector_pumps[reads.fileno] = reads

    def end_reads(self, reads: PumpedReads) -> None:
        """Before the socket closes: no more pumped reads (a select pumping it goes on as
        if woken for nothing, and waits for the connection's other file)."""
        if self._selector_pumps.get(reads.fileno) is reads:
            del self._selector_pumps[reads.fileno]
            self.forget(reads.fileno)

    def pumped_reads(self, fileno: int) -> PumpedReads | None:
        return self._selector_pumps.get(fileno)

    def watch(self, entry: _Waiting) -> None:
        """`entry.ready(fileno)` at each tick while its file is readable (TickerSelector)."""
        self._watch(entry, self._epoll, self._waiting)

    def unwatch(self, entry: _Waiting) -> None:
        """No more ticks for `entry` (its file may be closed already: the number may now be
        another socket's, which stays)."""
        if self._waiting.get(entry.fileno) is entry:
            del self._waiting[entry.fileno]
            _unregister(self._epoll, entry.fileno)
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if not self._waiting and not self._pumped and not self._steps and self._timer is not None:
            self._timer.stop()

    @property
    def watched(self) -> int:
        return len(self._waiting) + len(self._pumped)

    def _watch(self, sock: Any, epoll: Any, into: dict[int, Any]) -> None:
        try:
            epoll.register(sock.fileno, select.EPOLLIN)
        except FileExistsError:  # a socket that was never forgotten, its number reused
            epoll.modify(sock.fileno, select.EPOLLIN)
        into[sock.fileno] = sock
        self._start_timer()

    def _start_timer(self) -> None:
        if self._timer is None:
            # ref=False: the ticker alone does not keep the event loop running.
            self._timer = gevent.get_hub().loop.timer(self._tick_s, self._tick_s, ref=False)
        if not self._timer.active:
            self._timer.start(self._tick)

    def _start_pump(self) -> None:
        if self._pump is None or self._pump.dead:
            self._pump = gevent.spawn(self._run_pump)

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
                    sock.ready(fileno)
        if (self._pumped or self._steps) and self._pump_wake.greenlet is not None:
            self._pump_wake.switch(None)

    def catch_up(self, late_s: float = LATE_S) -> None:
        """At a checkpoint of bulk work (shared/realtime.py), in whichever greenlet: run a
        pump round now if none began in the last `late_s`. The tick's own round waits for
        the event loop's turn, which under load runs hundreds of greenlets first; a round
        never waits, so it can run anywhere but inside another round."""
        if (
            (self._pumped or self._steps)
            and not self._in_round
            and time.monotonic() - self._round_at >= late_s
        ):
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
        if round_hook is not None:
            round_hook()
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
            if self._steps:
                self._run_steps(time.monotonic())
        finally:
            self._in_round = False

    def _run_steps(self, now: float) -> None:
        """The steps due by `now` (taken first: those they ask for wait for a round)."""
        steps = self._steps
        due = []
        while steps and steps[0][0] <= now:
            due.append(heapq.heappop(steps)[2])
        for step in due:
            try:
                step()
            except Exception:  # a step reports its own failures; this is a defect
                log.exception("read ticker: a step failed")
        if not steps:
            self._stop_if_idle()


def _unregister(epoll: Any, fileno: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        epoll.unregister(fileno)


class TickerSelector(selectors.BaseSelector):
    """A selector whose `select()` waits on the read ticker (see the module docstring): for
    reading only, and for the greenlets of one gevent hub (the ticker's)."""

    def __init__(self, ticker: ReadTicker) -> None:
        self._ticker = ticker
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._watched: dict[int, _Watched] = {}
        self._ready: set[int] = set()  # files a tick found readable since the last select
        self._waiter = Waiter()
        self._pumping = -1  # the file the pump reads for this select (`_pump_reads`)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if events != selectors.EVENT_READ:
            raise ValueError(f"TickerSelector waits for reading only, not events {events}")
        fileno = _fileno(fileobj)
        if fileno in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fileno}) is already registered")
        key = self._keys[fileno] = selectors.SelectorKey(fileobj, fileno, events, data)
        watched = self._watched[fileno] = _Watched(fileno, self)
        self._ticker.watch(watched)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fileno = _fileno(fileobj)
        key = self._keys.pop(fileno)  # KeyError when not registered, as the contract says
        self._ticker.unwatch(self._watched.pop(fileno))
        self._ready.discard(fileno)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None and not self._ready:
            self._pump_reads()
        if self._ready:
            pass
        elif timeout is None:
            self._waiter.get()
        elif timeout > 0:
            with gevent.Timeout(timeout, False):
                self._waiter.get()
        self._waiter.clear()
        ready, self._ready = self._ready, set()
        return [(self._keys[f], selectors.EVENT_READ) for f in ready if f in self._keys]

    def close(self) -> None:
        for fileno in list(self._keys):
            self.unregister(fileno)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return MappingProxyType(self._keys)

    def _pump_reads(self) -> None:
        """If one of the files has `PumpedReads`, and they can pump: have the pump read it
        until it hands it back, then report it readable (websockets' loop reads what the pump
        left: `shared.providers.messages`), unless the reads ended (the socket is closing)."""
        ticker = self._ticker
        reads = None
        for fileno in self._keys:
            if (reads := ticker.pumped_reads(fileno)) is not None:
                break
        if reads is None or not reads.can_pump():
            return
        fileno = reads.fileno
        watched = self._watched[fileno]
        ticker.unwatch(watched)  # the pump's epoll has it now
        self._pumping = fileno
        try:
            ticker.readable(fileno)
            ticker.pump(fileno, reads.read)
        finally:
            self._pumping = -1
            ticker.forget(fileno)
            if ticker.pumped_reads(fileno) is reads:  # not ended: the socket is open
                ticker.watch(watched)
                self._ready.add(fileno)

    def _wake(self, fileno: int) -> None:
        """In the hub, from a tick: the file is readable."""
        self._ready.add(fileno)
        if self._pumping >= 0:  # the connection's other file: its reader must see it
            self._ticker.forget(self._pumping)
            return
        self._waiter.switch(None)  # into select() if it waits, else kept for the next one


class _Watched:
    """One file of a TickerSelector, in the ticker's waiting set."""

    __slots__ = ("fileno", "selector")

    def __init__(self, fileno: int, selector: TickerSelector) -> None:
        self.fileno = fileno
        self.selector = selector

    def ready(self, fileno: int) -> None:
        self.selector._wake(fileno)


def _fileno(fileobj: Any) -> int:
    fileno = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if not isinstance(fileno, int) or fileno < 0:
        raise ValueError(f"invalid file descriptor: {fileobj!r}")
    return fileno


def wait_provider_sockets(ticker: ReadTicker) -> None:
    """From now on, websockets' sync connections (the provider SDKs' sockets) wait for data
    on `ticker`. websockets offers no option for this: its connection module's reference to
    `selectors`, which gevent's patching has already made gevent's, is replaced."""
    selector = functools.partial(TickerSelector, ticker)
    websockets_connection.selectors = with_names(selectors, DefaultSelector=selector)  # type: ignore[attr-defined]
    messages.pump_reads_with(ticker)
