"""/calls: list with filters, the record with turns, operator updates."""

from __future__ import annotations

from typing import Any

from shared.services import calls
from shared.services.calls import CallFilter
from web.api.context import db, principal
from web.api.routing import resource_blueprint
from web.api.schemas.calls import CallDetail, CallOut, CallPatch, CallQuery
from web.api.schemas.common import IdPath, ListOut, page_out

bp = resource_blueprint("calls")


@bp.get("/calls", responses={200: ListOut[CallOut]})
def list_(query: CallQuery) -> Any:
    filters = CallFilter(
        status=query.status,
        agent_id=query.agent_id,
        customer_id=query.customer_id,
        since=query.since,
        until=query.until,
    )
    return page_out(
        CallOut, calls.list_calls(db(), principal(), filters, query.limit, query.cursor)
    )


@bp.get("/calls/<id>", responses={200: CallDetail})
def get(path: IdPath) -> Any:
    return CallDetail.model_validate(calls.get_with_turns(db(), principal(), path.id)).model_dump(
        mode="json"
    )


@bp.patch("/calls/<id>", responses={200: CallOut})
def patch(path: IdPath, body: CallPatch) -> Any:
    call = calls.update(db(), principal(), path.id, **body.model_dump(exclude_unset=True))
    return CallOut.model_validate(call).model_dump(mode="json")
