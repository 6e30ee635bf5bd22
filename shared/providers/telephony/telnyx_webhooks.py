"""Telnyx webhook verification and parsing.

Telnyx signs `f"{telnyx-timestamp}|{raw body}"` with Ed25519; the signature (base64, 64
bytes) comes in `telnyx-signature-ed25519`, the Unix-seconds timestamp in
`telnyx-timestamp`. PyNaCl (libsodium) verifies in ~66 µs per KiB; the VerifyKey is built
once per public key. The SDK's `webhooks.unwrap` does the same but also parses into its
own models; we need only verification, then our own small event type.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from shared.providers.webhooks import InvalidWebhook

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class TelnyxEvent:
    id: str
    type: str
    occurred_at: datetime | None
    payload: dict[str, Any]
    raw: dict[str, Any]

    @property
    def call_control_id(self) -> str | None:
        return self.payload.get("call_control_id")


@lru_cache(maxsize=8)
def _verify_key(public_key_b64: str) -> VerifyKey:
    try:
        return VerifyKey(base64.b64decode(public_key_b64, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidWebhook("TELNYX_PUBLIC_KEY is not a base64 Ed25519 key") from exc


def verify(
    body: bytes, headers: Mapping[str, str], public_key_b64: str, now: float | None = None
) -> None:
    """Raise InvalidWebhook unless `body` carries a valid, fresh Telnyx signature."""
    headers = {name.lower(): value for name, value in headers.items()}
    signature_b64 = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature_b64 or not timestamp:
        raise InvalidWebhook("missing telnyx-signature-ed25519 or telnyx-timestamp header")
    try:
        sent_at = int(timestamp)
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidWebhook("malformed signature or timestamp header") from exc
    if abs((now if now is not None else time.time()) - sent_at) > TOLERANCE_SECONDS:
        raise InvalidWebhook("timestamp outside the 5-minute window")
    if len(signature) != 64:
        raise InvalidWebhook("signature is not 64 bytes")
    try:
        _verify_key(public_key_b64).verify(timestamp.encode() + b"|" + body, signature)
    except BadSignatureError as exc:
        raise InvalidWebhook("signature does not match") from exc


def parse(body: bytes) -> TelnyxEvent:
    """Parse a verified body into an event; InvalidWebhook if it is not the v2 envelope."""
    try:
        raw = json.loads(body)
        data = raw["data"]
        occurred = data.get("occurred_at")
        return TelnyxEvent(
            id=str(data["id"]),
            type=str(data["event_type"]),
            occurred_at=datetime.fromisoformat(occurred) if occurred else None,
            payload=dict(data.get("payload") or {}),
            raw=raw,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidWebhook("body is not a Telnyx v2 webhook envelope") from exc
