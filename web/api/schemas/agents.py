"""Agents and phone numbers."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from web.api.schemas.common import E164, Input, Output


class KnowledgeItem(Input):
    question: str = Field(min_length=1, max_length=2000)
    answer: str = Field(min_length=1, max_length=8000)


class KnowledgeOut(Output):
    question: str
    answer: str


class AgentIn(Input):
    name: str = Field(min_length=1, max_length=200)
    persona: str = Field("", max_length=20000)
    greeting: str = Field("", max_length=2000)
    closing: str = Field("", max_length=2000)
    voice: str | None = Field(None, max_length=200)
    language: str = Field("en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    knowledge: list[KnowledgeItem] = Field(default_factory=list, max_length=500)


class AgentPatch(Input):
    name: str | None = Field(None, min_length=1, max_length=200)
    persona: str | None = Field(None, max_length=20000)
    greeting: str | None = Field(None, max_length=2000)
    closing: str | None = Field(None, max_length=2000)
    voice: str | None = Field(None, max_length=200)
    language: str | None = Field(None, pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    knowledge: list[KnowledgeItem] | None = Field(None, max_length=500)


class AgentOut(Output):
    id: uuid.UUID
    name: str
    persona: str
    greeting: str
    closing: str
    voice: str | None
    language: str
    knowledge: list[KnowledgeOut]
    created_at: datetime
    updated_at: datetime


class PhoneNumberIn(Input):
    number: E164
    agent_id: uuid.UUID


class PhoneNumberOut(Output):
    id: uuid.UUID
    number: str
    agent_id: uuid.UUID
    created_at: datetime
