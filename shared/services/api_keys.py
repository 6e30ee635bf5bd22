"""API keys: created once (the secret is shown once), stored hashed, usable as Bearer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.errors import NotFound, Unauthorized
from shared.services.pagination import Page, paginate
from shared.services.principal import Principal
from shared.services.secrets import matches, new_token, parse_token

KEY_PREFIX = "sbk"
LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    key: str


def create(session: Session, principal: Principal, name: str) -> CreatedKey:
    token = new_token(KEY_PREFIX)
    row = ApiKey(
        id=token.id,
        organization_id=principal.organization_id,
        name=name,
        secret_hash=token.digest,
        created_by=principal.user_id,
    )
    session.add(row)
    session.flush()
    return CreatedKey(row=row, key=str(token))


def list_keys(
    session: Session, principal: Principal, limit: int, cursor: str | None
) -> Page[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.organization_id == principal.organization_id)
    return paginate(session, stmt, ApiKey, limit, cursor)


def delete(session: Session, principal: Principal, key_id: uuid.UUID) -> None:
    row = session.get(ApiKey, key_id)
    if row is None or row.organization_id != principal.organization_id:
        raise NotFound("api key")
    session.delete(row)


def looks_like_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX + "_")


def authenticate(session: Session, credential: str) -> Principal:
    token = parse_token(credential, KEY_PREFIX)
    row = session.get(ApiKey, token.id) if token else None
    if token is None or row is None or not matches(token, row.secret_hash):
        raise Unauthorized("API key is not valid")
    now = datetime.now(UTC)
    # Coarse on purpose: one write a minute per key, not one per request.
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_GRANULARITY:
        # SKIP LOCKED: of the requests racing on a stale value, one writes; the others
        # move on instead of queueing on the row lock until that request commits.
        stale = (
            select(ApiKey.id)
            .where(ApiKey.id == row.id)
            .where(
                or_(
                    ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_GRANULARITY
                )
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        session.execute(update(ApiKey).where(ApiKey.id == stale).values(last_used_at=now))
    return Principal(organization_id=row.organization_id, api_key_id=row.id)
