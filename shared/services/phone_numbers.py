"""Phone numbers that route inbound calls to an agent. A number belongs to one tenant."""

from __future__ import annotations

import uuid

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from shared.db.models import Agent, PhoneNumber
from shared.errors import Conflict
from shared.services.pagination import Page, paginate
from shared.services.principal import Principal
from shared.services.tenancy import get_owned


def create(
    session: Session, principal: Principal, *, number: str, agent_id: uuid.UUID
) -> PhoneNumber:
    get_owned(session, Agent, agent_id, principal, "agent")
    if session.scalar(select(PhoneNumber.id).where(PhoneNumber.number == number)):
        raise Conflict(f"{number} is already registered")
    row = PhoneNumber(organization_id=principal.organization_id, number=number, agent_id=agent_id)
    session.add(row)
    session.flush()
    return row


def list_numbers(
    session: Session, principal: Principal, limit: int, cursor: str | None
) -> Page[PhoneNumber]:
    stmt = select(PhoneNumber).where(PhoneNumber.organization_id == principal.organization_id)
    return paginate(session, stmt, PhoneNumber, limit, cursor)


def delete(session: Session, principal: Principal, number_id: uuid.UUID) -> None:
    session.delete(get_owned(session, PhoneNumber, number_id, principal, "phone number"))


def route(session: Session, number: str) -> Row[uuid.UUID, uuid.UUID, str] | None:
    """Which tenant and agent an inbound call to `number` reaches (webhooks; no principal):
    (organization_id, agent_id, number), read as a row, not an ORM object."""
    return session.execute(_ROUTE, {"number": number}).first()


_ROUTE = select(PhoneNumber.organization_id, PhoneNumber.agent_id, PhoneNumber.number).where(
    PhoneNumber.number == bindparam("number")
)
