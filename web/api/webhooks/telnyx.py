"""POST /webhooks/telnyx: verify (Ed25519) → dedupe → apply → commit → queue the follow-ups."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Response, current_app, request

from shared.config import Settings
from shared.providers.telephony import telnyx_webhooks
from shared.queue.broker import enqueue
from shared.queue.tasks import ANALYZE_CALL, CALL_CONTROL
from shared.services import events, telephony
from web.api.context import db
from web.api.routing import API_PREFIX
from web.api.webhooks.common import acknowledged, rejected, verified_event, webhook_blueprint

log = logging.getLogger(__name__)
SOURCE = "telnyx"


def receive() -> Any:
    """Telnyx Call Control events (signed with the account's Ed25519 key)."""
    settings: Settings = current_app.config["SETTINGS"]
    headers = dict(request.headers)
    event = verified_event(
        SOURCE,
        settings.telnyx_public_key,
        "TELNYX_PUBLIC_KEY",
        lambda body, key: telnyx_webhooks.verify(body, headers, key),
        telnyx_webhooks.parse,
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
        occurred_at=event.occurred_at,
        call_control_id=event.call_control_id,
    )
    if recorded is None:
        return acknowledged(duplicate=True)
    org, call = recorded.organization_id, recorded.call_id
    effects = telephony.apply_event(session, event, (org, call) if org and call else None)
    events.link(session, recorded, effects.organization_id, effects.call_id)
    session.commit()
    return _dispatch(event.id, effects)


def _dispatch(event_id: str, effects: telephony.Effects) -> Any:
    """Queue what the event asked for; if Redis refuses, forget the event so the
    redelivery Telnyx makes on our 503 is processed again (apply_event is idempotent)."""
    broker = current_app.extensions["broker"]
    try:
        for order in effects.orders:
            enqueue(
                broker,
                CALL_CONTROL,
                str(order.command),
                order.call_control_id,
                str(order.call_id or ""),
            )
        if effects.finished and effects.call_id:
            enqueue(broker, ANALYZE_CALL, str(effects.call_id))
    except redis.RedisError:
        log.exception("could not queue follow-up work; asking Telnyx to redeliver")
        events.forget(db(), SOURCE, event_id)
        db().commit()
        return rejected(SOURCE, "temporarily unable to process the event", status=503)
    return acknowledged()


blueprints = []
for _prefix in ("", API_PREFIX):
    _bp = webhook_blueprint(SOURCE, _prefix)
    _bp.post("/telnyx", responses={200: None})(receive)
    blueprints.append(_bp)
