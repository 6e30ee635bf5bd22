"""Opaque credentials (refresh tokens, API keys): `<prefix>_<id>_<secret>`.

The id finds the row; only SHA-256 of the secret is stored, and it is compared in
constant time, so neither a database leak nor response timing reveals a usable secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class OpaqueToken:
    id: uuid.UUID
    secret: str
    prefix: str

    def __str__(self) -> str:
        return f"{self.prefix}_{self.id.hex}_{self.secret}"

    @property
    def digest(self) -> bytes:
        return hash_secret(self.secret)


def new_token(prefix: str) -> OpaqueToken:
    return OpaqueToken(id=uuid.uuid4(), secret=secrets.token_urlsafe(32), prefix=prefix)


def parse_token(value: str, prefix: str) -> OpaqueToken | None:
    head, sep, rest = value.partition("_")
    if head != prefix or not sep:
        return None
    raw_id, sep, secret = rest.partition("_")
    if not sep or not secret:
        return None
    try:
        return OpaqueToken(id=uuid.UUID(hex=raw_id), secret=secret, prefix=prefix)
    except ValueError:
        return None


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def matches(token: OpaqueToken, stored_digest: bytes) -> bool:
    return hmac.compare_digest(token.digest, stored_digest)
