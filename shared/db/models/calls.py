"""Calls, their turns (what was said, with latency figures) and the carrier events seen."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.db.models.base import Base, now_column, org_fk, uuid_pk


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_org_created", "organization_id", "created_at", "id"),
        Index("ix_calls_org_status_created", "organization_id", "status", "created_at"),
        Index("ix_calls_org_agent_created", "organization_id", "agent_id", "created_at"),
        Index("ix_calls_org_customer_created", "organization_id", "customer_id", "created_at"),
        UniqueConstraint("organization_id", "idempotency_key", name="uq_calls_org_idempotency"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk(index=False)
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL")
    )
    direction: Mapped[str] = mapped_column(String(10))
    from_number: Mapped[str] = mapped_column(String(20))
    to_number: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    outcome: Mapped[str | None] = mapped_column(String(100))
    notes: Mapped[str | None] = mapped_column(Text)
    hangup_cause: Mapped[str | None] = mapped_column(String(40))
    telnyx_call_control_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    # Indexed: events without a call_control_id (recordings) are matched by session.
    telnyx_call_session_id: Mapped[str | None] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    recording_url: Mapped[str | None] = mapped_column(Text)
    machine_detection: Mapped[str | None] = mapped_column(String(40))
    summary: Mapped[str | None] = mapped_column(Text)
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    crm_engagement_id: Mapped[str | None] = mapped_column(String(100))
    ab_variant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ab_variants.id", ondelete="SET NULL")
    )
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_seconds: Mapped[float | None]
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()

    turns: Mapped[list[CallTurn]] = relationship(
        order_by="CallTurn.seq", lazy="raise", cascade="all, delete-orphan"
    )


class CallTurn(Base):
    __tablename__ = "call_turns"
    __table_args__ = (UniqueConstraint("call_id", "seq", name="uq_call_turns_call_seq"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    call_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    seq: Mapped[int]
    speaker: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    interrupted: Mapped[bool] = mapped_column(default=False, server_default="false")
    sentiment: Mapped[float | None]
    stt_ms: Mapped[float | None]
    llm_ttft_ms: Mapped[float | None]
    tts_ttfa_ms: Mapped[float | None]
    voice_to_voice_ms: Mapped[float | None]


class CallEvent(Base):
    """A carrier or billing event as received; (source, event_id) makes delivery idempotent."""

    __tablename__ = "call_events"
    __table_args__ = (UniqueConstraint("source", "event_id", name="uq_call_events_source_event"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    call_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(20))
    event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(100))
    occurred_at: Mapped[datetime | None]
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = now_column()
