"""What the voice process holds for all its calls: settings, sessions, providers, broker."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import gevent
from sqlalchemy.orm import Session, sessionmaker

from shared import realtime
from shared.background import start_worker
from shared.config import Settings
from shared.observability.metrics import VOICE_GC_PAUSE, VOICE_LOOP_LAG
from shared.providers.registry import ProviderSet
from shared.queue.broker import enqueue
from shared.queue.tasks import CALL_CONTROL
from shared.services.call_context import CallStart
from shared.voice.call_loop import LoopConfig
from shared.voice.recorder import TurnWriter
from shared.voice.stages import CallProviders
from web.voice.read_ticker import ReadTicker, read_ticker, wait_provider_sockets

log = logging.getLogger(__name__)


def freeze_long_lived_objects() -> None:
    """Move everything alive now (the loaded models: ~160k objects) out of the garbage
    collector's reach. Otherwise every full collection walks them all, ~120 ms with the
    GIL held: a stall of every call's audio in the process.

    Then promote less: with the default thresholds (700, 10, 10) a middle-generation
    collection runs every ~7,000 allocations, a few ms at 100 calls, so a reply's objects
    (they live seconds) reach the oldest generation and set off full collections, which
    walk every call's long-lived objects: 40 ms at 100 calls, up to 100 ms at 160. With 50
    young collections per middle one (100 tried too: middle collections of 18-32 ms) the
    benchmark's windows at 140-180 calls saw at most one pause over 20 ms, and frame lag
    p99 at 160 calls fell from 188 ms to 45-60 ms (docs/voice-benchmark-log.md).
    """
    gc.collect()
    gc.freeze()
    young, _, oldest = gc.get_threshold()
    gc.set_threshold(young, 50, oldest)


class GcPauses:
    """Times every collection for `voice_gc_pause_seconds` (a full collection walks every
    call's long-lived objects, ~600 a call, with all audio waiting), and observes the
    times later, in `flush()`, never in the gc callback itself. A collection starts inside
    whichever allocation set it off, which can be inside prometheus_client's update of a
    value, under its non-reentrant lock: observing from the callback then waited on that
    lock forever, and with it every greenlet that touched a metric. The benchmark caught
    the voice process frozen so: every call silent, the worker's CPU at 0."""

    def __init__(self) -> None:
        self._started = 0.0
        # The callback only appends (no lock; a float is not even tracked by the
        # collector); at most a few seconds of pauses wait here for flush().
        self._pauses: deque[float] = deque(maxlen=4096)
        self._stopped = threading.Event()

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append(time.perf_counter() - self._started)

    def flush(self) -> None:
        while True:
            try:  # popleft alone: a flush running beside this one may take the last
                pause = self._pauses.popleft()
            except IndexError:
                return
            VOICE_GC_PAUSE.observe(pause)

    def flush_until_closed(self, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            self.flush()

    def close(self) -> None:
        """Stop timing (the callback leaves `gc.callbacks`) and stop the flushing."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.on_gc)
        self._stopped.set()
        self.flush()


def watch_gc_pauses(flush_s: float = 1.0) -> GcPauses:
    """Time every collection from now on; observed every `flush_s` by a background worker."""
    pauses = GcPauses()
    gc.callbacks.append(pauses.on_gc)
    start_worker(lambda: pauses.flush_until_closed(flush_s), "gc-pauses")
    return pauses


class LoopLag:
    """`voice_event_loop_lag_seconds`: how late a short timer fires, measured all the time.
    A frame that arrived, or audio due out, waits just as long for its greenlet to run, so
    this is the voice worker's own share of any late audio, apart from the network's and
    the peer's (`voice_inbound_frame_lag_seconds` counts from the phone's send time). It is
    the first sign of a worker with more calls than its core carries."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stopped = threading.Event()

    def run_until_closed(self) -> None:
        while True:
            due = time.monotonic() + self.interval_s
            if self._stopped.wait(self.interval_s):
                return
            VOICE_LOOP_LAG.observe(max(0.0, time.monotonic() - due))

    def close(self) -> None:
        self._stopped.set()


def watch_loop_lag(interval_s: float = 0.05) -> LoopLag:
    """Measure the worker's event-loop lag from now on, in a background worker."""
    lag = LoopLag(interval_s)
    start_worker(lag.run_until_closed, "loop-lag")
    return lag


@dataclass
class VoiceRuntime:
    settings: Settings
    sessions: sessionmaker[Session]
    providers: ProviderSet
    broker: dramatiq.Broker
    loop_config: LoopConfig
    ready: bool = False  # local models loaded: calls answer without a cold start
    turns: TurnWriter = field(init=False)  # every call's turns, stored off the audio path
    _ticker: ReadTicker | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.turns = TurnWriter(self.sessions)

    def read_ticker(self) -> ReadTicker | None:
        """The process's read ticker, made on first use: in the worker, on its hub (None
        where there is no epoll). The calls' media sockets and, from then on, their
        provider sockets wait on it."""
        if self._ticker is None:
            self._ticker = read_ticker()
            if self._ticker is not None:
                realtime.register(self._ticker.catch_up)
                wait_provider_sockets(self._ticker)
        return self._ticker

    def call_providers(self) -> CallProviders:
        return self.providers.for_call()

    def warm_up(self) -> gevent.Greenlet:
        """Load local models in the background: the first call must not wait on a load."""

        def load() -> None:
            # Model loading is CPU work in C: an OS thread of the hub's pool keeps the
            # hub (and any early call) responsive meanwhile.
            gevent.get_hub().threadpool.spawn(self.providers.warm_up).get()
            freeze_long_lived_objects()
            watch_gc_pauses()
            watch_loop_lag()
            self.ready = True

        return gevent.spawn(load)

    def hang_up(self, start: CallStart) -> None:
        self._command("hangup", start, "")

    def transfer(self, start: CallStart, to: str) -> None:
        self._command("transfer", start, to)

    def _command(self, command: str, start: CallStart, argument: str) -> None:
        if not start.call_control_id:
            log.warning("cannot %s: the call has no call_control_id", command)
            return
        # Off the audio path: a greenlet of its own does the Redis round trip.
        gevent.spawn(
            enqueue,
            self.broker,
            CALL_CONTROL,
            command,
            start.call_control_id,
            str(start.call_id),
            argument,
        )
