"""Customers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import EmailStr, Field

from web.api.schemas.common import E164, Input, ListQuery, Output


class CustomerIn(Input):
    phone: E164
    name: str | None = Field(None, max_length=200)
    email: EmailStr | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class CustomerPatch(Input):
    phone: E164 | None = None
    name: str | None = Field(None, max_length=200)
    email: EmailStr | None = None
    metadata: dict[str, Any] | None = None


class CustomerQuery(ListQuery):
    phone: E164 | None = None


class CustomerOut(Output):
    id: uuid.UUID
    phone: str
    name: str | None
    email: str | None
    metadata: dict[str, Any] = Field(validation_alias="metadata_")
    created_at: datetime
    updated_at: datetime


class ContextQuery(Input):
    query: str | None = Field(
        None, max_length=2000, description="what the call is about: ranks memories"
    )


class RecalledMemoryOut(Output):
    content: str
    similarity: float | None
    type: str


class RecentCallOut(Output):
    id: uuid.UUID
    direction: str
    status: str
    outcome: str | None
    summary: str | None
    created_at: datetime


class CustomerContextOut(Output):
    customer_profile: CustomerOut
    recent_calls: list[RecentCallOut]
    relevant_memories: list[RecalledMemoryOut]
    suggested_approach: str | None
