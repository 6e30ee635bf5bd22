"""Received webhook events: stored once per (source, event id), which makes delivery idempotent."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import CallEvent

# Every webhook runs these two: built once, on the table rather than the mapped class.
# The SQL is the same (and the session still autoflushes before each); what is saved is
# building the statement and computing its cache key on every call, and the ORM's
# bulk-DML pass.
_EVENTS = cast(Table, CallEvent.__table__)


def _param(column: str) -> Any:
    """A bound parameter typed as the column it fills."""
    return bindparam(f"new_{column}", type_=_EVENTS.c[column].type)


_RECORD = (
    insert(_EVENTS)
    .values(
        {
            column: _param(column)
            for column in ("id", "source", "event_id", "event_type", "payload", "occurred_at")
        }
    )
    .on_conflict_do_nothing(constraint="uq_call_events_source_event")
    .returning(_EVENTS.c.id)
)
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
) -> uuid.UUID | None:
    """Store the event; return its row id, or None if this (source, id) was seen before.

    The unique constraint decides, so two concurrent deliveries of one event cannot
    both be processed.
    """
    row_id: uuid.UUID | None = session.scalar(
        _RECORD,
        {
            "new_id": uuid.uuid4(),
            "new_source": source,
            "new_event_id": event_id,
            "new_event_type": event_type,
            "new_payload": payload,
            "new_occurred_at": occurred_at,
        },
    )
    return row_id


def link(
    session: Session,
    row_id: uuid.UUID,
    organization_id: uuid.UUID | None,
    call_id: uuid.UUID | None,
) -> None:
    """Attach a stored event to the tenant and call it turned out to concern."""
    session.execute(
        _LINK,
        {"row_id": row_id, "linked_organization_id": organization_id, "linked_call_id": call_id},
    )


def forget(session: Session, source: str, event_id: str) -> None:
    """Drop the record of an event whose follow-up work could not be queued, so the
    sender's redelivery is processed again rather than skipped as a duplicate."""
    session.execute(
        delete(CallEvent).where(CallEvent.source == source, CallEvent.event_id == event_id)
    )
