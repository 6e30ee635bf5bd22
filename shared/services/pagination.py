"""Keyset pagination over (created_at, id), newest first: stable under inserts, O(limit)."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from shared.errors import InvalidInput

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        return datetime.fromisoformat(when), uuid.UUID(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor", "cursor is not one this API issued") from exc


def paginate(
    session: Session, stmt: Select[Any], model: Any, limit: int, cursor: str | None
) -> Page[Any]:
    """`stmt` selects `model` rows already filtered by tenant; this orders, seeks and cuts."""
    key = tuple_(model.created_at, model.id)
    if cursor:
        stmt = stmt.where(key < tuple_(*decode_cursor(cursor)))
    rows = list(
        session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return Page(items=rows, next_cursor=next_cursor)
