"""Calls: listing with filters, the full record with turns, and operator updates."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from shared.db.driver import driver_rows
from shared.db.models import Call, CallTurn
from shared.errors import NotFound
from shared.services.call_status import check_transition
from shared.services.pagination import Page, cut, keyset, keyset_params
from shared.services.principal import Principal
from shared.services.tenancy import get_owned


@dataclass(frozen=True)
class CallFilter:
    status: str | None = None
    agent_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


# Each filter as a condition on a bound parameter of the same name.
_FILTERS: dict[str, Callable[[Any], Any]] = {
    "status": lambda c: c.status == bindparam("status"),
    "agent_id": lambda c: c.agent_id == bindparam("agent_id"),
    "customer_id": lambda c: c.customer_id == bindparam("customer_id"),
    "since": lambda c: c.created_at >= bindparam("since"),
    "until": lambda c: c.created_at < bindparam("until"),
}


def list_calls(
    session: Session,
    principal: Principal,
    filters: CallFilter,
    limit: int,
    cursor: str | None,
    fields: Sequence[str],
) -> Page[tuple[Any, ...]]:
    """A page of calls as tuples of `fields` (column names of `calls`, with created_at and
    id among them)."""
    given = {name: getattr(filters, name) for name in _FILTERS if getattr(filters, name)}
    stmt = _page_statement(tuple(fields), tuple(given), seek=bool(cursor))
    params = {"org": principal.organization_id, **given, **keyset_params(limit, cursor)}
    rows = driver_rows(session, stmt, params)
    at, row_id = fields.index("created_at"), fields.index("id")
    return cut(rows, limit, lambda row: (row[at], row[row_id]))


def get_with_turns(
    session: Session,
    principal: Principal,
    call_id: uuid.UUID,
    fields: Sequence[str],
    turn_fields: Sequence[str],
) -> dict[str, Any]:
    """The call's `fields` with its turns' `turn_fields` under "turns", in order.

    One round trip (a call joined to its turns), no ORM objects: this is the API's
    hottest read, and the ORM's instance bookkeeping was most of its cost.
    """
    stmt = _record_statement(tuple(fields), tuple(turn_fields))
    rows = driver_rows(session, stmt, {"id": call_id, "org": principal.organization_id})
    if not rows:
        raise NotFound("call")
    record = dict(zip(fields, rows[0], strict=False))
    turn_present = len(fields)
    record["turns"] = [
        dict(zip(turn_fields, row[turn_present + 1 :], strict=True))
        for row in rows
        if row[turn_present] is not None
    ]
    return record


# The read statements are built once per shape (Core, on the tables, with bound
# parameters): building one and deriving its cache key cost ~10 % of a request.


@functools.cache
def _page_statement(fields: tuple[str, ...], filters: tuple[str, ...], seek: bool) -> Select[Any]:
    calls = Call.__table__.c
    stmt = select(*_columns(Call, fields)).where(calls.organization_id == bindparam("org"))
    for name in filters:
        stmt = stmt.where(_FILTERS[name](calls))
    return keyset(stmt, calls.created_at, calls.id, seek=seek)


@functools.cache
def _record_statement(fields: tuple[str, ...], turn_fields: tuple[str, ...]) -> Select[Any]:
    calls, turns = Call.__table__, CallTurn.__table__
    turn_columns = [turns.c[name].label(f"turn_{name}") for name in turn_fields]
    return (
        select(*_columns(Call, fields), turns.c.id.label("turn_present"), *turn_columns)
        .select_from(calls.outerjoin(turns, turns.c.call_id == calls.c.id))
        .where(calls.c.id == bindparam("id"), calls.c.organization_id == bindparam("org"))
        .order_by(turns.c.seq)
    )


def _columns(model: Any, names: Sequence[str]) -> list[Any]:
    table = model.__table__
    return [table.c[name] for name in names]


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
