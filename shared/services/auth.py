"""Registration, passwords, refresh-token rotation with theft detection, revocation.

Access tokens are JWTs minted by the web tier; this module owns everything stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import Organization, RefreshToken, User
from shared.errors import Conflict, Unauthorized
from shared.services import auth_cache
from shared.services.principal import Principal
from shared.services.secrets import OpaqueToken, matches, new_token, parse_token

REFRESH_PREFIX = "rt"
_hasher = PasswordHasher()
# Verified against when the email is unknown, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


@dataclass(frozen=True)
class IssuedRefresh:
    user: User
    token: str


def register(session: Session, *, organization: str, email: str, password: str) -> User:
    if session.scalar(select(User.id).where(User.email == email.lower())):
        raise Conflict("an account with this email already exists")
    org = Organization(name=organization)
    session.add(org)
    session.flush()
    user = User(organization_id=org.id, email=email.lower(), password_hash=_hasher.hash(password))
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise Conflict("an account with this email already exists") from exc
    return user


def authenticate(session: Session, *, email: str, password: str) -> User:
    user = session.scalar(select(User).where(User.email == email.lower()))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerifyMismatchError, InvalidHashError):
        user = None
    if user is None:
        raise Unauthorized("email or password is wrong")
    return user


def issue_refresh(
    session: Session, user: User, lifetime: timedelta, family_id: uuid.UUID | None = None
) -> str:
    token = new_token(REFRESH_PREFIX)
    session.add(
        RefreshToken(
            id=token.id,
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            secret_hash=token.digest,
            expires_at=_now() + lifetime,
        )
    )
    session.flush()
    return str(token)


def rotate_refresh(session: Session, raw: str, lifetime: timedelta) -> IssuedRefresh:
    """Spend `raw` and issue its successor. A second use of a spent token is theft:
    the whole family is revoked (the caller must commit even though this raises)."""
    row, token = _find_refresh(session, raw)
    if row.revoked_at is not None or row.expires_at <= _now():
        raise Unauthorized("refresh token is expired or revoked")
    # Conditional update: of two concurrent refreshes with one token, exactly one wins.
    spent = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.spent_at.is_(None))
        .values(spent_at=_now())
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        revoke_family(session, row.family_id)
        raise TokenReuse("refresh token was already used; its session has been revoked")
    user = session.get_one(User, row.user_id)
    return IssuedRefresh(user=user, token=issue_refresh(session, user, lifetime, row.family_id))


def revoke(session: Session, raw: str) -> None:
    row, _ = _find_refresh(session, raw)
    revoke_family(session, row.family_id)


def revoke_family(session: Session, family_id: uuid.UUID) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=_now())
    )


def revoke_all(session: Session, user_id: uuid.UUID) -> None:
    """Every refresh token of the user, and (via token_version) every access token."""
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=_now())
    )
    session.execute(
        update(User).where(User.id == user_id).values(token_version=User.token_version + 1)
    )
    auth_cache.revoked(session, "user", user_id)


def access_principal(session: Session, user_id: uuid.UUID, token_version: object) -> Principal:
    """Who a verified access token acts as, unless revoke-all has moved on since it was
    minted (its `tv` claim is older than the user's token_version)."""
    user = auth_cache.for_session(session).get_or_load(
        "user",
        user_id,
        lambda: session.execute(
            select(User.organization_id, User.token_version).where(User.id == user_id)
        ).first(),
    )
    if user is None or user.token_version != token_version:
        raise Unauthorized("access token has been revoked")
    return Principal(organization_id=user.organization_id, user_id=user_id)


class TokenReuse(Unauthorized):
    """A spent refresh token came back: its family is revoked and the caller must commit."""


def _find_refresh(session: Session, raw: str) -> tuple[RefreshToken, OpaqueToken]:
    token = parse_token(raw, REFRESH_PREFIX)
    row = session.get(RefreshToken, token.id) if token else None
    if token is None or row is None or not matches(token, row.secret_hash):
        raise Unauthorized("refresh token is not valid")
    return row, token


def _now() -> datetime:
    return datetime.now(UTC)
