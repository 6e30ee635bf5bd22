"""Received webhook events: stored once per (source, event id), which makes delivery idempotent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import Call, CallEvent

# Every webhook runs these two: built once, on the table rather than the mapped class.
# The SQL is the same (and the session still autoflushes before each); what is saved is
# building the statement and computing its cache key on every call, and the ORM's
# bulk-DML pass.
_EVENTS = cast(Table, CallEvent.__table__)


def _param(column: str) -> Any:
    """A bound parameter typed as the column it fills."""
    return bindparam(f"new_{column}", type_=_EVENTS.c[column].type)


_CALLS = cast(Table, Call.__table__)


def _of_call(column: str) -> Any:
    """The column of the call with the event's call_control_id (NULL if none)."""
    return (
        select(_CALLS.c[column])
        .where(_CALLS.c.telnyx_call_control_id == bindparam("call_control_id", type_=String))
        .scalar_subquery()
    )


# Linked to its call as it is inserted, when the call is already known by its
# call_control_id (every Telnyx event but the first of an inbound call): one statement and
# one row version instead of an insert and then an update (which, changing two indexed,
# foreign-key columns, cost PostgreSQL a second tuple, index entries and FK checks).
_RECORD = (
    insert(_EVENTS)
    .values(
        {
            **{
                column: _param(column)
                for column in ("id", "source", "event_id", "event_type", "payload", "occurred_at")
            },
            "organization_id": _of_call("organization_id"),
            "call_id": _of_call("id"),
        }
    )
    .on_conflict_do_nothing(constraint="uq_call_events_source_event")
    .returning(_EVENTS.c.id, _EVENTS.c.organization_id, _EVENTS.c.call_id)
)


@dataclass(frozen=True)
class Recorded:
    """A stored event's row and what it was linked to on insert."""

    row_id: uuid.UUID
    organization_id: uuid.UUID | None
    call_id: uuid.UUID | None


_LINK = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("row_id"))
    .values(
        organization_id=bindparam("linked_organization_id", type_=_EVENTS.c.organization_id.type),
        call_id=bindparam("linked_call_id", type_=_EVENTS.c.call_id.type),
    )
)


def record(
    session: Session,
    *,
    source: str,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    occurred_at: datetime | None = None,
    call_control_id: str | None = None,
) -> Recorded | None:
    """Store the event (linked to the call with `call_control_id`, if there is one yet);
    None if this (source, id) was seen before.

    The unique constraint decides, so two concurrent deliveries of one event cannot
    both be processed.
    """
    row = session.execute(
        _RECORD,
        {
            "new_id": uuid.uuid4(),
            "new_source": source,
            "new_event_id": event_id,
            "new_event_type": event_type,
            "new_payload": payload,
            "new_occurred_at": occurred_at,
            "call_control_id": call_control_id,
        },
    ).first()
    return Recorded(*row) if row else None


def link(
    session: Session,
    recorded: Recorded,
    organization_id: uuid.UUID | None,
    call_id: uuid.UUID | None,
) -> None:
    """Attach a stored event to the tenant and call it turned out to concern (unless it
    was linked to them on insert)."""
    if (recorded.organization_id, recorded.call_id) == (organization_id, call_id):
        return
    session.execute(
        _LINK,
        {
            "row_id": recorded.row_id,
            "linked_organization_id": organization_id,
            "linked_call_id": call_id,
        },
    )


def forget(session: Session, source: str, event_id: str) -> None:
    """Drop the record of an event whose follow-up work could not be queued, so the
    sender's redelivery is processed again rather than skipped as a duplicate."""
    session.execute(
        delete(CallEvent).where(CallEvent.source == source, CallEvent.event_id == event_id)
    )
