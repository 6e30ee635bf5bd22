"""Turns leave the call loop as records; one writer greenlet per process stores them off
the audio path."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, cast

import gevent
from gevent.event import Event
from gevent.queue import Queue
from sqlalchemy import Table, insert
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import session_scope
from shared.db.models import CallTurn

log = logging.getLogger(__name__)
# A Core insert: the ORM's unit of work (an object, a flush) cost three times as much, for
# every turn of every call in the voice process.
_INSERT_TURN = insert(cast(Table, CallTurn.__table__))


@dataclass(frozen=True)
class TurnRecord:
    seq: int
    speaker: Literal["caller", "agent"]
    text: str
    started_at: datetime
    ended_at: datetime | None
    interrupted: bool = False
    sentiment: float | None = None
    stt_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfa_ms: float | None = None
    voice_to_voice_ms: float | None = None


class TurnSink(Protocol):
    def record(self, turn: TurnRecord) -> None:
        """Accept a finished turn without blocking."""

    def close(self, timeout: float) -> None:
        """Store what is pending (waiting at most `timeout` seconds)."""


class TurnWriter:
    """Stores the turns of every call in the process, off the audio path: one writer
    greenlet, several turns per INSERT. A turn waits up to `window_s` for others to join
    its statement: one row per INSERT cost ~400 µs of the voice worker's CPU, five ~150 µs
    each (docs/voice-benchmark-log.md). At most `max_rows` a statement: preparing one is CPU
    the writer spends without a pause, in which no call's audio moves (2.4 ms for 50 rows,
    18.8 ms for 500, measured against PostgreSQL; the voice benchmark's account caught a
    13.6 ms one at 120 calls). A batch that fails is retried row by row, so one bad row (a call
    deleted meanwhile) loses only itself."""

    def __init__(
        self, factory: sessionmaker[Session], *, window_s: float = 0.1, max_rows: int = 50
    ) -> None:
        self.factory = factory
        self.window_s = window_s
        self.max_rows = max_rows
        self.queue: Queue[tuple[CallTurns, TurnRecord]] = Queue()
        self.greenlet: gevent.Greenlet | None = None

    def for_call(self, call_id: uuid.UUID) -> CallTurns:
        """The sink of one call's turns."""
        return CallTurns(self, call_id)

    def put(self, sink: CallTurns, turn: TurnRecord) -> None:
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._drain)
        self.queue.put((sink, turn))

    def _drain(self) -> None:
        while True:
            batch = [self.queue.get()]
            gevent.sleep(self.window_s)
            while len(batch) < self.max_rows and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._write(batch)

    def _write(self, batch: list[tuple[CallTurns, TurnRecord]]) -> None:
        try:
            rows = [{"call_id": sink.call_id, **turn.__dict__} for sink, turn in batch]
            with session_scope(self.factory) as session:
                session.execute(_INSERT_TURN, rows)
        except Exception:
            if len(batch) > 1:
                for item in batch:
                    self._write([item])
                return
            sink, turn = batch[0]
            log.exception(
                "could not store a turn", extra={"call_id": str(sink.call_id), "seq": turn.seq}
            )
        for sink, _ in batch:
            sink.written()


class CallTurns:
    """One call's `TurnSink`: its turns go to the process's TurnWriter."""

    def __init__(self, writer: TurnWriter, call_id: uuid.UUID) -> None:
        self.writer = writer
        self.call_id = call_id
        self.pending = 0
        self.drained = Event()
        self.drained.set()

    def record(self, turn: TurnRecord) -> None:
        self.pending += 1
        self.drained.clear()
        self.writer.put(self, turn)

    def written(self) -> None:
        """One of this call's turns is stored (or was logged as lost)."""
        self.pending -= 1
        if self.pending == 0:
            self.drained.set()

    def close(self, timeout: float) -> None:
        if not self.drained.wait(timeout):
            log.error("turn writer did not finish in time", extra={"call_id": str(self.call_id)})
