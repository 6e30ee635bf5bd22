"""Calls: listing with filters, the full record with turns, and operator updates."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from shared.db.models import Call
from shared.errors import NotFound
from shared.services.call_status import check_transition
from shared.services.pagination import Page, paginate
from shared.services.principal import Principal
from shared.services.tenancy import get_owned


@dataclass(frozen=True)
class CallFilter:
    status: str | None = None
    agent_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_calls(
    session: Session, principal: Principal, filters: CallFilter, limit: int, cursor: str | None
) -> Page[Call]:
    stmt = select(Call).where(Call.organization_id == principal.organization_id)
    if filters.status:
        stmt = stmt.where(Call.status == filters.status)
    if filters.agent_id:
        stmt = stmt.where(Call.agent_id == filters.agent_id)
    if filters.customer_id:
        stmt = stmt.where(Call.customer_id == filters.customer_id)
    if filters.since:
        stmt = stmt.where(Call.created_at >= filters.since)
    if filters.until:
        stmt = stmt.where(Call.created_at < filters.until)
    return paginate(session, stmt, Call, limit, cursor)


def get_with_turns(session: Session, principal: Principal, call_id: uuid.UUID) -> Call:
    # One round trip: for a single call a join is cheaper than selectin's second query.
    stmt = (
        select(Call)
        .where(Call.id == call_id, Call.organization_id == principal.organization_id)
        .options(joinedload(Call.turns))
    )
    call = session.scalars(stmt).unique().one_or_none()
    if call is None:
        raise NotFound("call")
    return call


def update(
    session: Session,
    principal: Principal,
    call_id: uuid.UUID,
    *,
    status: str | None = None,
    **changes: str | None,
) -> Call:
    # Row lock: concurrent transitions (operator vs. carrier events) apply one at a time.
    call = get_owned(session, Call, call_id, principal, "call", for_update=True)
    if status is not None:
        call.status = check_transition(call.status, status)
    for name, value in changes.items():
        setattr(call, name, value)
    call.updated_at = datetime.now(UTC)
    session.flush()
    return call
