"""POST /webhooks/hubspot: verify (signature v3) → dedupe each event → apply contact changes.

HubSpot signs the public URL it called, so the URI is rebuilt from PUBLIC_WEB_URL and the
request's path and query; PUBLIC_WEB_URL must be the scheme and host configured as the
app's webhook target. The request session is committed by web.api.context when the answer
is below 400, so the stored events and their effects land together or not at all.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, request
from flask_openapi3.blueprint import APIBlueprint

from shared.config import Settings
from shared.providers.crm import hubspot_webhooks
from shared.services import crm_sync, events
from web.api.context import db
from web.api.routing import API_PREFIX
from web.api.webhooks.common import acknowledged, verified_event, webhook_blueprint

log = logging.getLogger(__name__)
SOURCE = "hubspot"


def receive() -> Any:
    """HubSpot webhook events (signed, v3, with the app's client secret)."""
    settings: Settings = current_app.config["SETTINGS"]
    headers, uri = dict(request.headers), public_uri(settings)
    delivered = verified_event(
        SOURCE,
        settings.hubspot_client_secret,
        "HUBSPOT_CLIENT_SECRET",
        lambda body, secret: hubspot_webhooks.verify(request.method, uri, body, headers, secret),
        hubspot_webhooks.parse,
    )
    if isinstance(delivered, Response):
        return delivered
    session = db()
    fresh = []
    for event in delivered:
        recorded = events.record(
            session,
            source=SOURCE,
            event_id=event.key,
            event_type=event.type,
            payload=hubspot_webhooks.storable(event.raw),
            occurred_at=event.occurred_at,
        )
        if recorded is None:
            log.info("hubspot event %s already received: skipped", event.event_id)
        else:
            fresh.append(event.raw)
    changed = crm_sync.apply_contact_change(session, fresh)
    log.info(
        "hubspot delivery applied",
        extra={"events": len(delivered), "new": len(fresh), "customers_changed": changed},
    )
    return acknowledged()


def public_uri(settings: Settings) -> str:
    """The URL HubSpot called: PUBLIC_WEB_URL + path + query (no bare trailing "?")."""
    full_path = request.full_path
    if full_path.endswith("?") and not request.query_string:
        full_path = full_path[:-1]
    return settings.public_web_url.rstrip("/") + full_path


blueprints: list[APIBlueprint] = []
for _prefix in ("", API_PREFIX):
    _bp = webhook_blueprint(SOURCE, _prefix)
    _bp.post("/hubspot", responses={200: None})(receive)
    blueprints.append(_bp)
