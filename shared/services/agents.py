"""Agents and their knowledge entries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Agent, KnowledgeEntry
from shared.services.pagination import Page, paginate
from shared.services.principal import Principal
from shared.services.tenancy import get_owned


@dataclass(frozen=True)
class Knowledge:
    question: str
    answer: str


def create(
    session: Session, principal: Principal, *, knowledge: list[Knowledge], **fields: Any
) -> Agent:
    agent = Agent(organization_id=principal.organization_id, **fields)
    agent.knowledge = _entries(knowledge)
    session.add(agent)
    session.flush()
    return agent


def get(session: Session, principal: Principal, agent_id: uuid.UUID) -> Agent:
    return get_owned(session, Agent, agent_id, principal, "agent")


def list_agents(
    session: Session, principal: Principal, limit: int, cursor: str | None
) -> Page[Agent]:
    stmt = select(Agent).where(Agent.organization_id == principal.organization_id)
    return paginate(session, stmt, Agent, limit, cursor)


def update(
    session: Session,
    principal: Principal,
    agent_id: uuid.UUID,
    *,
    knowledge: list[Knowledge] | None = None,
    **changes: Any,
) -> Agent:
    """Apply the given fields; a given `knowledge` list replaces the old one whole."""
    agent = get(session, principal, agent_id)
    for name, value in changes.items():
        setattr(agent, name, value)
    if knowledge is not None:
        agent.knowledge = _entries(knowledge)
    agent.updated_at = datetime.now(UTC)
    session.flush()
    return agent


def delete(session: Session, principal: Principal, agent_id: uuid.UUID) -> None:
    session.delete(get(session, principal, agent_id))


def _entries(knowledge: list[Knowledge]) -> list[KnowledgeEntry]:
    return [
        KnowledgeEntry(position=i, question=k.question, answer=k.answer)
        for i, k in enumerate(knowledge)
    ]
