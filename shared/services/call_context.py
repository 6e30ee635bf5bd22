"""What an agent knows when a call starts: loaded once, in one short transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.db.models import AbVariant, Agent, Call, Customer, Memory
from shared.providers.llm.base import AgentContext, KnowledgeItem
from shared.services.call_status import TERMINAL
from shared.services.customer_context import RECENT_CALLS, suggested_approach

MEMORIES = 3


@dataclass(frozen=True)
class CallStart:
    call_id: uuid.UUID
    organization_id: uuid.UUID
    call_control_id: str | None
    context: AgentContext
    voice: str | None
    language: str


class CallNotLive(Exception):
    """The stream names a call that is missing, another tenant's, or already over."""


def load(session: Session, call_id: uuid.UUID, organization_id: uuid.UUID) -> CallStart:
    call = session.get(Call, call_id)
    if call is None or call.organization_id != organization_id:
        raise CallNotLive("no such call for this tenant")
    if call.status in TERMINAL:
        raise CallNotLive(f"the call has already ended ({call.status})")
    agent = session.scalar(
        select(Agent).where(Agent.id == call.agent_id).options(selectinload(Agent.knowledge))
    )
    if agent is None:
        raise CallNotLive("the call has no agent")
    customer = session.get(Customer, call.customer_id) if call.customer_id else None
    earlier = _earlier_calls(session, call) if customer else []
    context = AgentContext(
        persona=_variant_persona(session, call) or agent.persona,
        greeting=agent.greeting,
        closing=agent.closing,
        language=agent.language,
        knowledge=tuple(
            KnowledgeItem(
                k.question, k.answer, list(k.embedding) if k.embedding is not None else None
            )
            for k in agent.knowledge
        ),
        customer_name=customer.name if customer else None,
        is_returning_customer=any(c.answered_at is not None for c in earlier),
        memories=_memories(session, call),
        insights=suggested_approach(customer, earlier) if customer and earlier else None,
    )
    return CallStart(
        call.id,
        call.organization_id,
        call.telnyx_call_control_id,
        context,
        agent.voice,
        agent.language,
    )


def _variant_persona(session: Session, call: Call) -> str | None:
    """The persona of the A/B variant the call was assigned to, if it has one of its own."""
    if call.ab_variant_id is None:
        return None
    variant = session.get(AbVariant, call.ab_variant_id)
    return variant.persona if variant is not None and variant.persona else None


def _earlier_calls(session: Session, call: Call) -> list[Call]:
    """The customer's previous calls with this tenant, newest first."""
    return list(
        session.scalars(
            select(Call)
            .where(
                Call.organization_id == call.organization_id,
                Call.customer_id == call.customer_id,
                Call.id != call.id,
            )
            .order_by(Call.created_at.desc())
            .limit(RECENT_CALLS)
        )
    )


def _memories(session: Session, call: Call) -> tuple[str, ...]:
    if call.customer_id is None:
        return ()
    rows = session.scalars(
        select(Memory.content)
        .where(
            Memory.customer_id == call.customer_id, Memory.organization_id == call.organization_id
        )
        .order_by(Memory.created_at.desc())
        .limit(MEMORIES)
    )
    return tuple(rows)
