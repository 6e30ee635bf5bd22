"""What calls taught: customer memories (pgvector), outcome statistics, A/B variants."""

from __future__ import annotations

import uuid
from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models.agents import EMBEDDING_DIM
from shared.db.models.base import Base, now_column, org_fk, uuid_pk


class Memory(Base):
    """A snapshot of what the agent should remember about a customer, embedded for recall."""

    __tablename__ = "memories"
    __table_args__ = (
        UniqueConstraint("call_id", "kind", name="uq_memories_call_kind"),
        Index("ix_memories_org_customer", "organization_id", "customer_id", "created_at"),
        Index(
            "ix_memories_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk(index=False)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    call_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(40))
    content: Mapped[str] = mapped_column(Text)
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))
    created_at: Mapped[datetime] = now_column()


class OutcomeStat(Base):
    """How often each agent's calls end in each outcome: the raw material of insights."""

    __tablename__ = "outcome_stats"

    agent_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    outcome: Mapped[str] = mapped_column(String(100), primary_key=True)
    organization_id: Mapped[uuid.UUID] = org_fk()
    calls: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = now_column()


class AbTest(Base):
    __tablename__ = "ab_tests"

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk()
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="running")
    created_at: Mapped[datetime] = now_column()


class AbVariant(Base):
    __tablename__ = "ab_variants"

    id: Mapped[uuid.UUID] = uuid_pk()
    test_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ab_tests.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    persona: Mapped[str | None] = mapped_column(Text)
    weight: Mapped[int] = mapped_column(default=1)
    calls: Mapped[int] = mapped_column(default=0)
    successes: Mapped[int] = mapped_column(default=0)
