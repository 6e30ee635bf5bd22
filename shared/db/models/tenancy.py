"""Organizations (tenants), their users, refresh-token families and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models.base import Base, now_column, org_fk, uuid_pk


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(40), default="free", server_default="free")
    billing_status: Mapped[str] = mapped_column(
        String(40), default="active", server_default="active"
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    subscription_status: Mapped[str | None] = mapped_column(String(40))
    # Set when a subscription turns past_due; calls stay allowed during the grace period.
    past_due_since: Mapped[datetime | None]
    # `created` of the last Stripe event applied: older deliveries arriving late are ignored.
    billing_updated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = now_column()


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk()
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    # Bumped by revoke-all: access tokens carrying an older version stop working at once.
    token_version: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = now_column()


class RefreshToken(Base):
    """One issued refresh token. Rotation chains tokens of one login into a family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    secret_hash: Mapped[bytes]
    expires_at: Mapped[datetime]
    spent_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = now_column()


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = uuid_pk()
    organization_id: Mapped[uuid.UUID] = org_fk()
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[bytes]
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    last_used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = now_column()
