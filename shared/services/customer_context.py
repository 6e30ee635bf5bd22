"""What an agent (or an operator) should know about a customer before talking to them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Call, Customer, Memory
from shared.services.principal import Principal
from shared.services.tenancy import get_owned

RECENT_CALLS = 5
MEMORIES = 5


@dataclass(frozen=True)
class RecalledMemory:
    content: str
    similarity: float | None  # cosine similarity to the query; None when recalled by recency
    type: str


@dataclass(frozen=True)
class CustomerContext:
    customer: Customer
    recent_calls: list[Call]
    memories: list[RecalledMemory]
    suggested_approach: str | None


def build(
    session: Session, principal: Principal, customer_id: uuid.UUID, query_vector: list[float] | None
) -> CustomerContext:
    customer = get_owned(session, Customer, customer_id, principal, "customer")
    calls = list(
        session.scalars(
            select(Call)
            .where(
                Call.organization_id == principal.organization_id, Call.customer_id == customer.id
            )
            .order_by(Call.created_at.desc())
            .limit(RECENT_CALLS)
        )
    )
    memories = _recall(session, customer, query_vector)
    return CustomerContext(customer, calls, memories, suggested_approach(customer, calls))


def _recall(
    session: Session, customer: Customer, query_vector: list[float] | None
) -> list[RecalledMemory]:
    scope = select(Memory).where(
        Memory.organization_id == customer.organization_id, Memory.customer_id == customer.id
    )
    if query_vector is None:
        rows = session.scalars(scope.order_by(Memory.created_at.desc()).limit(MEMORIES))
        return [RecalledMemory(m.content, None, m.kind) for m in rows]
    distance = Memory.embedding.cosine_distance(query_vector)
    ranked = session.execute(
        scope.add_columns(distance)
        .where(Memory.embedding.is_not(None))
        .order_by(distance)
        .limit(MEMORIES)
    )
    return [RecalledMemory(m.content, round(1 - float(d), 4), m.kind) for m, d in ranked]


def suggested_approach(customer: Customer, calls: list[Call]) -> str | None:
    """A plain-language hint from the customer's calls (newest first): for the operator's
    context view and, as the agent's insights, for the next call."""
    finished = [c for c in calls if c.outcome]
    if not finished:
        return "First contact: introduce the business briefly and ask how you can help."
    last = finished[0]
    sentiment = (last.analysis or {}).get("average_sentiment")
    mood = ""
    if isinstance(sentiment, float | int):
        mood = (
            " and was unhappy"
            if sentiment < -0.2
            else " and was satisfied"
            if sentiment > 0.2
            else ""
        )
    name = customer.name or "The caller"
    return f"{name} has called {len(calls)} time(s); the last call ended as '{last.outcome}'{mood}. Greet them as a returning customer."
