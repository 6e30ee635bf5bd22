"""Turns leave the call loop as records; a writer greenlet stores them off the audio path."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, cast

import gevent
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


class DbTurnWriter:
    """Writes each turn (one INSERT) in a greenlet of its own: the loop only puts records
    on a queue, so a slow database never delays audio."""

    def __init__(self, factory: sessionmaker[Session], call_id: uuid.UUID) -> None:
        self.factory = factory
        self.call_id = call_id
        self.queue: Queue[TurnRecord | None] = Queue()
        self.greenlet = gevent.spawn(self._drain)

    def record(self, turn: TurnRecord) -> None:
        self.queue.put(turn)

    def close(self, timeout: float) -> None:
        self.queue.put(None)
        self.greenlet.join(timeout=timeout)
        if not self.greenlet.dead:
            log.error("turn writer did not finish in time", extra={"call_id": str(self.call_id)})

    def _drain(self) -> None:
        for turn in self.queue:
            if turn is None:
                return
            try:
                with session_scope(self.factory) as session:
                    session.execute(_INSERT_TURN, {"call_id": self.call_id, **turn.__dict__})
            except Exception:
                log.exception(
                    "could not store a turn", extra={"call_id": str(self.call_id), "seq": turn.seq}
                )
