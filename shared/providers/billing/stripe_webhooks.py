"""Stripe webhook verification and parsing.

Stripe signs `f"{t}.{raw body}"` with HMAC-SHA256, keyed with the endpoint's `whsec_…`
secret used as is, and sends `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`.
While a secret is being rolled there are several `v1` values; any one matching is enough.
The official SDK checks the signature (constant-time) and then the age: a timestamp more
than 300 s in the past is refused, one in the future is not (that is the SDK's rule).

Verification runs on the raw bytes, before anything parses them; `parse` is for a body
that has passed `verify`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import stripe

from shared.providers.webhooks import InvalidWebhook

SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
_MAX_ID = 200  # call_events.event_id
_MAX_TYPE = 100  # call_events.event_type


@dataclass(frozen=True)
class StripeEvent:
    id: str
    type: str
    created: datetime
    object: dict[str, Any]  # data.object: the subscription, invoice, … the event is about
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def verify(body: bytes, signature_header: str | None, secret: str) -> None:
    """Raise InvalidWebhook unless `body` carries a valid, fresh Stripe signature."""
    if not signature_header or not signature_header.strip():
        raise InvalidWebhook(f"missing {SIGNATURE_HEADER} header")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:  # Stripe signs text; the SDK would crash on this
        raise InvalidWebhook("body is not UTF-8, so it cannot carry a Stripe signature") from exc
    try:
        stripe.WebhookSignature.verify_header(
            body, signature_header, secret, tolerance=TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as first:
        # Tell a stale timestamp from a bad signature: the SDK checks the signature first,
        # so if it passes without the age check, the age was the problem.
        try:
            stripe.WebhookSignature.verify_header(body, signature_header, secret, tolerance=None)
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(f"bad signature: {_reason(exc)}") from exc
        raise InvalidWebhook(
            f"stale timestamp: signed more than {TOLERANCE_SECONDS} s ago"
        ) from first


def parse(body: bytes) -> StripeEvent:
    """Parse a verified body into an event; InvalidWebhook if it is not a Stripe v1 event."""
    try:
        raw = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidWebhook("body is not JSON") from exc
    if not isinstance(raw, dict) or raw.get("object") != "event":
        raise InvalidWebhook('body is not a Stripe event (expected "object": "event")')
    event_id, event_type, created = raw.get("id"), raw.get("type"), raw.get("created")
    data = raw.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(event_id, str) or not 0 < len(event_id) <= _MAX_ID:
        raise InvalidWebhook("Stripe event has no valid id")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= _MAX_TYPE:
        raise InvalidWebhook("Stripe event has no valid type")
    if isinstance(created, bool) or not isinstance(created, int):
        raise InvalidWebhook("Stripe event has no valid created timestamp")
    if not isinstance(obj, dict):
        raise InvalidWebhook("Stripe event has no data.object")
    try:
        created_at = datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidWebhook("Stripe event has no valid created timestamp") from exc
    return StripeEvent(id=event_id, type=event_type, created=created_at, object=obj, raw=raw)


def _reason(exc: stripe.SignatureVerificationError) -> str:
    return exc.user_message or str(exc) or "signature does not match"
