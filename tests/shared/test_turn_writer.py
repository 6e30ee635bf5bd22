"""The voice process's turn writer on real PostgreSQL: every call's turns in few INSERTs,
nothing lost, and one bad row costing only itself."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Agent, CallTurn
from shared.voice.recorder import TurnRecord, TurnWriter
from tests.conftest import add_call, add_org


def new_call(db: Session) -> uuid.UUID:
    org = add_org(db)
    agent = Agent(organization_id=org.id, name="Desk", persona="", greeting="Hi.", closing="Bye.")
    db.add(agent)
    db.flush()
    return add_call(db, org.id, agent_id=agent.id).id


def turn(seq: int) -> TurnRecord:
    now = datetime.now(UTC)
    return TurnRecord(seq, "caller" if seq % 2 else "agent", f"turn {seq}", now, now)


def stored(db: Session) -> set[tuple[uuid.UUID, int, str]]:
    rows = db.execute(select(CallTurn.call_id, CallTurn.seq, CallTurn.text))
    return {(r.call_id, r.seq, r.text) for r in rows}


def count_inserts(session_factory: sessionmaker[Session]) -> list[str]:
    statements: list[str] = []

    def before(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT INTO call_turns"):
            statements.append(statement)

    event.listen(session_factory.kw["bind"], "before_cursor_execute", before)
    return statements


def test_turns_of_several_calls_are_stored_together_in_one_insert(
    db: Session, session_factory: sessionmaker[Session]
) -> None:
    first, second = new_call(db), new_call(db)
    inserts = count_inserts(session_factory)
    writer = TurnWriter(session_factory, window_s=0.05)
    a, b = writer.for_call(first), writer.for_call(second)
    for seq in (1, 2, 3):
        a.record(turn(seq))
    for seq in (1, 2):
        b.record(turn(seq))

    a.close(timeout=5)
    b.close(timeout=5)

    assert stored(db) == {(first, n, f"turn {n}") for n in (1, 2, 3)} | {
        (second, n, f"turn {n}") for n in (1, 2)
    }
    assert len(inserts) == 1


def test_a_row_that_cannot_be_stored_loses_only_itself(
    db: Session, session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    call = new_call(db)
    writer = TurnWriter(session_factory, window_s=0.05)
    good, gone = writer.for_call(call), writer.for_call(uuid.uuid4())  # no such call
    good.record(turn(1))
    gone.record(turn(1))
    good.record(turn(2))

    with caplog.at_level(logging.ERROR, logger="shared.voice.recorder"):
        good.close(timeout=5)
        gone.close(timeout=5)

    assert stored(db) == {(call, 1, "turn 1"), (call, 2, "turn 2")}
    lost = [r for r in caplog.records if r.getMessage() == "could not store a turn"]
    assert [r.__dict__["call_id"] for r in lost] == [str(gone.call_id)]
    assert good.pending == gone.pending == 0


def test_a_backlog_goes_in_statements_of_at_most_max_rows(
    db: Session, session_factory: sessionmaker[Session]
) -> None:
    # Preparing a statement is CPU the writer spends without a pause, while every call's
    # audio waits: a backlog is split.
    call = new_call(db)
    inserts = count_inserts(session_factory)
    writer = TurnWriter(session_factory, window_s=0.05)
    sink = writer.for_call(call)
    for seq in range(1, 121):
        sink.record(turn(seq))
    sink.close(timeout=10)

    assert stored(db) == {(call, n, f"turn {n}") for n in range(1, 121)}
    assert len(inserts) == 3  # 50 + 50 + 20
