"""What the voice process holds for all its calls: settings, sessions, providers, broker."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import dramatiq
import gevent
from sqlalchemy.orm import Session, sessionmaker

from shared import realtime
from shared.background import start_worker
from shared.config import Settings
from shared.observability.metrics import VOICE_LOOP_LAG
from shared.providers.registry import ProviderSet
from shared.queue.broker import enqueue
from shared.queue.tasks import CALL_CONTROL
from shared.services.call_context import CallStart
from shared.voice.call_loop import LoopConfig
from shared.voice.recorder import TurnWriter
from shared.voice.stages import CallProviders
from web.voice.gc_policy import CallCount, run_full_collections, watch_gc_pauses
from web.voice.read_ticker import ReadTicker, read_ticker, wait_provider_sockets

log = logging.getLogger(__name__)


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
    calls: CallCount = field(default_factory=CallCount)  # full collections wait for none up
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
            run_full_collections(self.calls)
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
