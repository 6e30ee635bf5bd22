"""POST /webhooks/stripe: verify (HMAC-SHA256) → dedupe → apply billing rules → commit.

The request session is committed by web.api.context when the answer is below 400, so
the stored event and its effect on the organization land together or not at all; a
failure answers 500 and Stripe redelivers.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, request
from flask_openapi3.blueprint import APIBlueprint

from shared.config import Settings
from shared.providers.billing import stripe_webhooks
from shared.providers.billing.stripe_webhooks import SIGNATURE_HEADER
from shared.services import billing, events
from web.api.context import db
from web.api.routing import API_PREFIX
from web.api.webhooks.common import acknowledged, verified_event, webhook_blueprint

log = logging.getLogger(__name__)
SOURCE = "stripe"


def receive() -> Any:
    """Stripe billing events (signed with the endpoint's whsec_ secret)."""
    settings: Settings = current_app.config["SETTINGS"]
    signature = request.headers.get(SIGNATURE_HEADER)
    event = verified_event(
        SOURCE,
        settings.stripe_webhook_secret,
        "STRIPE_WEBHOOK_SECRET",
        lambda body, secret: stripe_webhooks.verify(body, signature, secret),
        stripe_webhooks.parse,
    )
    if isinstance(event, Response):
        return event
    session = db()
    recorded = events.record(
        session,
        source=SOURCE,
        event_id=event.id,
        event_type=event.type,
        payload=event.raw,
        occurred_at=event.created,
    )
    if recorded is None:
        log.info("stripe event %s already received: skipped", event.id)
        return acknowledged(duplicate=True)
    organization_id = billing.apply_event(session, event)
    if organization_id is not None:
        events.link(session, recorded, organization_id, None)
    return acknowledged()


blueprints: list[APIBlueprint] = []
for _prefix in ("", API_PREFIX):
    _bp = webhook_blueprint(SOURCE, _prefix)
    _bp.post("/stripe", responses={200: None})(receive)
    blueprints.append(_bp)
