"""Keyset pagination over (created_at, id), newest first: stable under inserts, O(limit)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Integer, Select, bindparam, tuple_
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


def keyset(stmt: Select[Any], created_at: Any, row_id: Any, *, seek: bool) -> Select[Any]:
    """`stmt` ordered newest first, after the cursor when `seek`, cut at the limit; the
    values are bound parameters (see `keyset_params`), so the statement can be built once."""
    if seek:
        stmt = stmt.where(
            tuple_(created_at, row_id) < tuple_(bindparam("cursor_at"), bindparam("cursor_id"))
        )
    return stmt.order_by(created_at.desc(), row_id.desc()).limit(
        bindparam("page_limit", type_=Integer)
    )


def keyset_params(limit: int, cursor: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"page_limit": limit + 1}  # one more: is there a next page?
    if cursor:
        params["cursor_at"], params["cursor_id"] = decode_cursor(cursor)
    return params


def cut(items: list[T], limit: int, key: Callable[[T], tuple[datetime, uuid.UUID]]) -> Page[T]:
    more = len(items) > limit
    items = items[:limit]
    return Page(items=items, next_cursor=encode_cursor(*key(items[-1])) if more else None)


def paginate(
    session: Session, stmt: Select[Any], model: Any, limit: int, cursor: str | None
) -> Page[Any]:
    """`stmt` selects `model` rows already filtered by tenant; this orders, seeks and cuts."""
    stmt = keyset(stmt, model.created_at, model.id, seek=bool(cursor))
    items = list(session.scalars(stmt, keyset_params(limit, cursor)))
    return cut(items, limit, lambda item: (item.created_at, item.id))
