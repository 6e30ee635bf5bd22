"""AI agents, their knowledge entries, and the phone numbers that route to them."""

from __future__ import annotations

import uuid
from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.db.models.base import Base, now_column, org_fk, uuid_pk

EMBEDDING_DIM = 384


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_org_created", "organization_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk(index=False)
    name: Mapped[str] = mapped_column(String(200))
    persona: Mapped[str] = mapped_column(Text, default="")
    greeting: Mapped[str] = mapped_column(Text, default="")
    closing: Mapped[str] = mapped_column(Text, default="")
    voice: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(20), default="en")
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()

    knowledge: Mapped[list[KnowledgeEntry]] = relationship(
        order_by="KnowledgeEntry.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )


class KnowledgeEntry(Base):
    __tablename__ = "knowledge_entries"

    id: Mapped[uuid.UUID] = uuid_pk()
    agent_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    # Filled by the embeddings actor; the local agent matches caller questions against it.
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))


class PhoneNumber(Base):
    """A number a tenant owns: inbound calls to it reach `agent_id`. Unique across tenants."""

    __tablename__ = "phone_numbers"
    __table_args__ = (Index("ix_phone_numbers_org_created", "organization_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk(index=False)
    number: Mapped[str] = mapped_column(String(20), unique=True)
    agent_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = now_column()
