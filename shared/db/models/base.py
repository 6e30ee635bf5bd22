"""Declarative base and the column conventions every model shares."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True)}


def uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def now_column() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def org_fk(*, index: bool = True) -> Mapped[uuid.UUID]:
    """The owning tenant. Tables with a composite (organization_id, ...) index pass index=False."""
    return mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=index)
