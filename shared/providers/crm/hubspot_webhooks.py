"""HubSpot webhook verification (signature v3) and parsing.

HubSpot sends `X-HubSpot-Signature-v3: base64(HMAC-SHA256(client secret, method + uri +
body + timestamp))` and `X-HubSpot-Request-Timestamp` (Unix milliseconds). `uri` is the full
URL HubSpot called (scheme, host, path, query). HubSpot's docs say to decode, in that URI,
exactly these percent-encodings before signing: %3A %2F %3F %40 %21 %24 %27 %28 %29 %2A
%2C %3B; every other escape (%20, %26, %3D, %25, ...) stays as sent. The SDK's Signature
helper decodes nothing, so verification is done here with hmac, on the raw body bytes.

Deliveries older than 5 minutes are refused (HubSpot's rule); so are timestamps more than
5 minutes in the future (ours: the SDK lets those through).

The body is a JSON array of up to 100 events. HubSpot documents `eventId` as "not
guaranteed to be unique", and a redelivery repeats the event with only `attemptNumber`
changed; `dedupe_key` is therefore the portal, the eventId and a digest of the event
without attemptNumber.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.providers.webhooks import InvalidWebhook

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
TOLERANCE_MS = 5 * 60 * 1000
_MAX_TYPE = 100  # call_events.event_type
_DECODED = {
    "3A": ":",
    "2F": "/",
    "3F": "?",
    "40": "@",
    "21": "!",
    "24": "$",
    "27": "'",
    "28": "(",
    "29": ")",
    "2A": "*",
    "2C": ",",
    "3B": ";",
}
_ENCODED = re.compile("%(" + "|".join(_DECODED) + ")", re.IGNORECASE)


@dataclass(frozen=True)
class HubSpotEvent:
    key: str  # our dedupe key, see dedupe_key()
    event_id: str
    type: str  # subscriptionType, e.g. "contact.propertyChange"
    object_id: str | None
    occurred_at: datetime | None
    raw: dict[str, Any]


def decode_uri(uri: str) -> str:
    """Decode the percent-encodings HubSpot's docs list, and only those."""
    return _ENCODED.sub(lambda m: _DECODED[m.group(1).upper()], uri)


def signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """The v3 signature of a request (also what a test signs with)."""
    message = method.upper().encode() + decode_uri(uri).encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(
    method: str,
    uri: str,
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    now: float | None = None,
) -> None:
    """Raise InvalidWebhook unless the request carries a valid, fresh v3 signature."""
    sent = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if not sent or not timestamp:
        raise InvalidWebhook(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    timestamp = timestamp.strip()
    if not timestamp.isdigit():
        raise InvalidWebhook("malformed timestamp header")
    now_ms = (now if now is not None else time.time()) * 1000
    age_ms = now_ms - int(timestamp)
    if age_ms >= TOLERANCE_MS:
        raise InvalidWebhook("timestamp is more than 5 minutes old")
    if -age_ms >= TOLERANCE_MS:
        raise InvalidWebhook("timestamp is more than 5 minutes in the future")
    try:
        received = base64.b64decode(sent.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise InvalidWebhook("signature is not base64") from exc
    expected = base64.b64decode(signature(secret, method, uri, body, timestamp))
    if not hmac.compare_digest(expected, received):
        raise InvalidWebhook("signature does not match")


def parse(body: bytes) -> list[HubSpotEvent]:
    """Parse a verified body; InvalidWebhook if it is not a JSON array. Items that are not
    events (no eventId or subscriptionType) are left out."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise InvalidWebhook("body is not JSON") from exc
    if not isinstance(raw, list):
        raise InvalidWebhook("body is not a JSON array of HubSpot events")
    events = []
    for item in raw:
        event = _event(item)
        if event is not None:
            events.append(event)
    return events


def dedupe_key(raw: Mapping[str, Any]) -> str:
    """portalId:eventId:digest of the event without attemptNumber (under 200 chars)."""
    stable = {k: v for k, v in raw.items() if k != "attemptNumber"}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    return f"{str(raw.get('portalId'))[:40]}:{str(raw.get('eventId'))[:40]}:{digest[:32]}"


def storable(value: Any) -> Any:
    """`value` with NUL characters removed from its strings: PostgreSQL's JSONB refuses
    \\u0000, and one such value must not make a whole delivery fail on every retry."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value


def _event(item: Any) -> HubSpotEvent | None:
    if not isinstance(item, dict):
        return None
    event_id, event_type = item.get("eventId"), item.get("subscriptionType")
    if isinstance(event_id, bool) or not isinstance(event_id, int | str) or event_id == "":
        return None
    if not isinstance(event_type, str) or not 0 < len(event_type) <= _MAX_TYPE:
        return None
    object_id = item.get("objectId")
    return HubSpotEvent(
        key=dedupe_key(item),
        event_id=str(event_id),
        type=event_type,
        object_id=None if object_id is None or isinstance(object_id, bool) else str(object_id),
        occurred_at=_occurred(item.get("occurredAt")),
        raw=item,
    )


def _occurred(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up case-insensitively
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value
