"""What the agent knows when a call's media stream starts (call_context.load), on real
PostgreSQL: the agent, the caller's history and memories, and the call's A/B variant."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from shared.db.models import (
    AbTest,
    AbVariant,
    Agent,
    Call,
    Customer,
    KnowledgeEntry,
    Memory,
)
from shared.services import call_context
from tests.conftest import add_org

CALLER, NUMBER = "+14155550123", "+14155550100"


@pytest.fixture
def agent(db: Session) -> Agent:
    org = add_org(db)
    agent = Agent(
        organization_id=org.id,
        name="Front desk",
        persona="You are the front desk of Acme Dental.",
        greeting="Hello, Acme Dental.",
        closing="Goodbye.",
        knowledge=[KnowledgeEntry(position=0, question="Open Saturday?", answer="Nine to two.")],
    )
    db.add(agent)
    db.flush()
    return agent


def new_call(db: Session, agent: Agent, customer: Customer | None, **fields: object) -> Call:
    call = Call(
        organization_id=agent.organization_id,
        agent_id=agent.id,
        customer_id=customer.id if customer else None,
        direction="inbound",
        from_number=CALLER,
        to_number=NUMBER,
        status=fields.pop("status", "in_progress"),
        **fields,
    )
    db.add(call)
    db.flush()
    return call


def test_a_first_time_caller_gets_the_agent_as_configured(db: Session, agent: Agent) -> None:
    customer = Customer(organization_id=agent.organization_id, phone=CALLER, name="Ada")
    db.add(customer)
    db.flush()
    call = new_call(db, agent, customer)

    start = call_context.load(db, call.id, agent.organization_id)

    context = start.context
    assert context.persona == agent.persona and context.greeting == "Hello, Acme Dental."
    assert [k.answer for k in context.knowledge] == ["Nine to two."]
    assert context.customer_name == "Ada"
    assert not context.is_returning_customer
    assert context.memories == () and context.insights is None


def test_a_returning_caller_brings_memories_and_what_the_last_call_taught(
    db: Session, agent: Agent
) -> None:
    customer = Customer(organization_id=agent.organization_id, phone=CALLER, name="Ada")
    db.add(customer)
    db.flush()
    earlier = new_call(
        db,
        agent,
        customer,
        status="completed",
        outcome="booked",
        answered_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    db.add(
        Memory(
            organization_id=agent.organization_id,
            customer_id=customer.id,
            call_id=earlier.id,
            kind="summary",
            content="Ada booked a cleaning for Tuesday.",
        )
    )
    call = new_call(db, agent, customer)

    context = call_context.load(db, call.id, agent.organization_id).context

    assert context.is_returning_customer
    assert context.memories == ("Ada booked a cleaning for Tuesday.",)
    assert context.insights is not None and "'booked'" in context.insights


def test_the_calls_ab_variant_persona_replaces_the_agents(db: Session, agent: Agent) -> None:
    test = AbTest(organization_id=agent.organization_id, agent_id=agent.id, name="warmer")
    db.add(test)
    db.flush()
    warm = AbVariant(test_id=test.id, name="warm", persona="You are warm and brief.")
    plain = AbVariant(test_id=test.id, name="control", persona=None)
    db.add_all([warm, plain])
    db.flush()

    with_variant = new_call(db, agent, None, ab_variant_id=warm.id)
    control = new_call(db, agent, None, ab_variant_id=plain.id)

    assert call_context.load(db, with_variant.id, agent.organization_id).context.persona == (
        "You are warm and brief."
    )
    assert call_context.load(db, control.id, agent.organization_id).context.persona == (
        agent.persona
    )


def test_an_ended_call_or_another_tenants_is_not_live(db: Session, agent: Agent) -> None:
    ended = new_call(db, agent, None, status="completed")
    live = new_call(db, agent, None)
    other = add_org(db, "Other")

    with pytest.raises(call_context.CallNotLive, match="already ended"):
        call_context.load(db, ended.id, agent.organization_id)
    with pytest.raises(call_context.CallNotLive, match="no such call"):
        call_context.load(db, live.id, other.id)
