"""Received webhook events: stored once per (source, event id), which makes delivery idempotent."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import CallEvent


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
    stmt = (
        insert(CallEvent)
        .values(
            id=uuid.uuid4(),
            source=source,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            occurred_at=occurred_at,
        )
        .on_conflict_do_nothing(constraint="uq_call_events_source_event")
        .returning(CallEvent.id)
    )
    return session.scalar(stmt)


def link(
    session: Session,
    row_id: uuid.UUID,
    organization_id: uuid.UUID | None,
    call_id: uuid.UUID | None,
) -> None:
    """Attach a stored event to the tenant and call it turned out to concern."""
    session.execute(
        update(CallEvent)
        .where(CallEvent.id == row_id)
        .values(organization_id=organization_id, call_id=call_id)
    )


def forget(session: Session, source: str, event_id: str) -> None:
    """Drop the record of an event whose follow-up work could not be queued, so the
    sender's redelivery is processed again rather than skipped as a duplicate."""
    session.execute(
        delete(CallEvent).where(CallEvent.source == source, CallEvent.event_id == event_id)
    )
