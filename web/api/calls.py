"""/calls: list with filters, the record with turns, operator updates."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import current_app

from shared.queue.broker import enqueue
from shared.queue.tasks import DIAL_CALL
from shared.services import calls, outbound
from shared.services.calls import CallFilter
from web.api.context import db, principal
from web.api.problems import problem
from web.api.routing import resource_blueprint
from web.api.schemas.calls import (
    CallCreate,
    CallDetail,
    CallOut,
    CallPatch,
    CallQuery,
    IdempotencyHeader,
    TurnOut,
)
from web.api.schemas.common import IdPath, ListOut

bp = resource_blueprint("calls")
# What the API shows is what its schemas declare: the reads select exactly these columns,
# and return the typed rows as they are (no re-validation of what the database typed).
CALL_FIELDS = tuple(CallOut.model_fields)
TURN_FIELDS = tuple(TurnOut.model_fields)
log = logging.getLogger(__name__)


@bp.post("/calls", responses={201: CallOut, 402: None, 503: None})
def create(body: CallCreate, header: IdempotencyHeader) -> Any:
    """Place an outbound call: stored `queued`, dialed by a worker through Telnyx."""
    request = outbound.OutboundRequest(
        agent_id=body.agent_id, to=body.to, customer_id=body.customer_id
    )
    placed = outbound.place(db(), principal(), request, header.idempotency_key)
    out = CallOut.model_validate(placed.call).model_dump(mode="json")
    if not placed.created:
        return out, 201, {"Idempotent-Replayed": "true"}
    db().commit()
    try:
        enqueue(current_app.extensions["broker"], DIAL_CALL, str(placed.call.id))
    except redis.RedisError:
        log.exception("could not queue the dial; withdrawing the call")
        outbound.withdraw(db(), placed.call.id)
        db().commit()
        return problem(503, "Service Unavailable", "the call queue is unavailable; try again")
    return out, 201


@bp.get("/calls", responses={200: ListOut[CallOut]})
def list_(query: CallQuery) -> Any:
    filters = CallFilter(
        status=query.status,
        agent_id=query.agent_id,
        customer_id=query.customer_id,
        since=query.since,
        until=query.until,
    )
    page = calls.list_calls(db(), principal(), filters, query.limit, query.cursor, CALL_FIELDS)
    data = [dict(zip(CALL_FIELDS, row, strict=True)) for row in page.items]
    return {"data": data, "next_cursor": page.next_cursor}


@bp.get("/calls/<id>", responses={200: CallDetail})
def get(path: IdPath) -> Any:
    return calls.get_with_turns(db(), principal(), path.id, CALL_FIELDS, TURN_FIELDS)


@bp.patch("/calls/<id>", responses={200: CallOut})
def patch(path: IdPath, body: CallPatch) -> Any:
    call = calls.update(db(), principal(), path.id, **body.model_dump(exclude_unset=True))
    return CallOut.model_validate(call).model_dump(mode="json")
