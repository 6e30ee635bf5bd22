"""Post-call work on a finished call: analysis, memory, outcome statistics, A/B results.

Each function is idempotent: analysis recomputes the same result; the others claim
(task, call id) in the job ledger so a redelivered job changes nothing more.
"""

from __future__ import annotations

import uuid
from statistics import fmean

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, selectinload

from shared.db.models import AbVariant, Call, Memory, OutcomeStat
from shared.providers.embeddings.base import EmbeddingsProvider
from shared.services.call_status import CallStatus
from shared.services.jobs import claim

SUCCESS_OUTCOMES = frozenset({"resolved", "booked", "sale", "qualified", "conversation"})
SUMMARY_CHARS = 600


def load(session: Session, call_id: uuid.UUID) -> Call | None:
    return session.scalar(select(Call).where(Call.id == call_id).options(selectinload(Call.turns)))


def analyze(session: Session, call: Call) -> None:
    """Summary, sentiment trajectory and an outcome (an operator's outcome is kept)."""
    caller = [t for t in call.turns if t.speaker == "caller"]
    sentiments = [t.sentiment for t in caller if t.sentiment is not None]
    call.analysis = {
        "turns": len(call.turns),
        "caller_turns": len(caller),
        "interruptions": sum(t.interrupted for t in call.turns),
        "sentiment_trajectory": sentiments,
        "average_sentiment": round(fmean(sentiments), 3) if sentiments else None,
    }
    call.summary = _summary(call)
    if call.outcome is None:
        call.outcome = _outcome(call, bool(caller))


def remember(session: Session, call: Call, embeddings: EmbeddingsProvider) -> bool:
    """A memory snapshot of the call for its customer, embedded for recall (pgvector).

    Re-running stores nothing new; a snapshot left without a vector (the embedding failed
    after the insert committed) gets one on the next run."""
    if call.customer_id is None or not call.summary:
        return False
    stmt = (
        insert(Memory)
        .values(
            id=uuid.uuid4(),
            organization_id=call.organization_id,
            customer_id=call.customer_id,
            call_id=call.id,
            kind="call_summary",
            content=call.summary,
        )
        .on_conflict_do_nothing(constraint="uq_memories_call_kind")
    )
    session.execute(stmt)
    memory = session.scalar(
        select(Memory).where(Memory.call_id == call.id, Memory.kind == "call_summary")
    )
    if memory is None or memory.embedding is not None:
        return False
    memory.embedding = embeddings.embed([memory.content], "document")[0]
    return True


def learn(session: Session, call: Call) -> bool:
    """Count the call's outcome for its agent."""
    if call.agent_id is None or call.outcome is None or not claim(session, "learn", str(call.id)):
        return False
    stmt = insert(OutcomeStat).values(
        agent_id=call.agent_id, outcome=call.outcome, organization_id=call.organization_id, calls=1
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[OutcomeStat.agent_id, OutcomeStat.outcome],
            set_={"calls": OutcomeStat.calls + 1, "updated_at": stmt.excluded.updated_at},
        )
    )
    return True


def record_ab_outcome(session: Session, call: Call) -> bool:
    if call.ab_variant_id is None or not claim(session, "ab_outcome", str(call.id)):
        return False
    success = int(call.outcome in SUCCESS_OUTCOMES)
    session.execute(
        update(AbVariant)
        .where(AbVariant.id == call.ab_variant_id)
        .values(calls=AbVariant.calls + 1, successes=AbVariant.successes + success)
    )
    return True


def _summary(call: Call) -> str:
    if not call.turns:
        return f"{call.direction.capitalize()} call, {call.status}: nothing was said."
    lines = [f"{t.speaker}: {t.text.strip()}" for t in call.turns if t.text.strip()]
    text = " | ".join(lines)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _outcome(call: Call, caller_spoke: bool) -> str:
    if call.status != CallStatus.COMPLETED:
        return str(call.status)
    return "conversation" if caller_spoke else "no_conversation"
