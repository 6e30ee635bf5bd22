"""Calls and their turns."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.services.call_status import CallStatus
from web.api.schemas.common import E164, Input, ListQuery, Output


class CallQuery(ListQuery):
    status: CallStatus | None = None
    agent_id: uuid.UUID | None = None
    customer_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


class CallCreate(Input):
    agent_id: uuid.UUID
    to: E164
    customer_id: uuid.UUID | None = None


class IdempotencyHeader(BaseModel):
    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Same key and body: the same call; same key, other body: 409",
    )


class CallPatch(Input):
    status: CallStatus | None = None
    outcome: str | None = Field(None, max_length=100)
    notes: str | None = Field(None, max_length=20000)


class TurnOut(Output):
    seq: int
    speaker: Literal["caller", "agent"]
    text: str
    started_at: datetime
    ended_at: datetime | None
    interrupted: bool
    sentiment: float | None
    stt_ms: float | None
    llm_ttft_ms: float | None
    tts_ttfa_ms: float | None
    voice_to_voice_ms: float | None


class CallOut(Output):
    id: uuid.UUID
    agent_id: uuid.UUID | None
    customer_id: uuid.UUID | None
    direction: Literal["inbound", "outbound"]
    from_number: str
    to_number: str
    status: CallStatus
    outcome: str | None
    notes: str | None
    hangup_cause: str | None
    answered_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None
    created_at: datetime
    updated_at: datetime


class CallDetail(CallOut):
    turns: list[TurnOut]
