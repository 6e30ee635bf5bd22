"""API keys: created once (the secret is shown once), stored hashed, usable as Bearer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.errors import NotFound, Unauthorized
from shared.services import auth_cache
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
    auth_cache.revoked(session, "key", key_id)


def looks_like_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX + "_")


@dataclass
class _KeyFacts:
    """What authenticating a key needs, as cached between requests (see auth_cache)."""

    organization_id: uuid.UUID
    secret_hash: bytes
    last_used_at: datetime | None


def authenticate(session: Session, credential: str) -> Principal:
    token = parse_token(credential, KEY_PREFIX)
    facts = None
    if token is not None:
        facts = auth_cache.for_session(session).get_or_load(
            "key", token.id, lambda: _key_facts(session, token.id)
        )
    if token is None or facts is None or not matches(token, facts.secret_hash):
        raise Unauthorized("API key is not valid")
    now = datetime.now(UTC)
    # Coarse on purpose: one write a minute per key, not one per request.
    if facts.last_used_at is None or now - facts.last_used_at > LAST_USED_GRANULARITY:
        _touch(session, token.id, now)
        facts.last_used_at = now
    return Principal(organization_id=facts.organization_id, api_key_id=token.id)


def _key_facts(session: Session, key_id: uuid.UUID) -> _KeyFacts | None:
    row = session.execute(
        select(ApiKey.organization_id, ApiKey.secret_hash, ApiKey.last_used_at).where(
            ApiKey.id == key_id
        )
    ).first()
    return _KeyFacts(*row) if row else None


def _touch(session: Session, key_id: uuid.UUID, now: datetime) -> None:
    # SKIP LOCKED: of the requests racing on a stale value, one writes; the others
    # move on instead of queueing on the row lock until that request commits.
    stale = (
        select(ApiKey.id)
        .where(ApiKey.id == key_id)
        .where(
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_GRANULARITY)
        )
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    session.execute(update(ApiKey).where(ApiKey.id == stale).values(last_used_at=now))
