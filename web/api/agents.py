"""/agents and /phone-numbers."""

from __future__ import annotations

from typing import Any

from shared.services import agents, phone_numbers
from shared.services.agents import Knowledge
from web.api.context import db, principal
from web.api.routing import resource_blueprint
from web.api.schemas.agents import AgentIn, AgentOut, AgentPatch, PhoneNumberIn, PhoneNumberOut
from web.api.schemas.common import IdPath, ListOut, ListQuery, page_out

bp = resource_blueprint("agents")
numbers_bp = resource_blueprint("phone_numbers")


def _out(agent: Any) -> dict[str, Any]:
    return AgentOut.model_validate(agent).model_dump(mode="json")


def _knowledge(items: list[Any] | None) -> list[Knowledge] | None:
    return None if items is None else [Knowledge(k.question, k.answer) for k in items]


@bp.post("/agents", responses={201: AgentOut})
def create(body: AgentIn) -> Any:
    fields = body.model_dump(exclude={"knowledge"})
    return _out(
        agents.create(db(), principal(), knowledge=_knowledge(body.knowledge) or [], **fields)
    ), 201


@bp.get("/agents", responses={200: ListOut[AgentOut]})
def list_(query: ListQuery) -> Any:
    return page_out(AgentOut, agents.list_agents(db(), principal(), query.limit, query.cursor))


@bp.get("/agents/<id>", responses={200: AgentOut})
def get(path: IdPath) -> Any:
    return _out(agents.get(db(), principal(), path.id))


@bp.patch("/agents/<id>", responses={200: AgentOut})
def patch(path: IdPath, body: AgentPatch) -> Any:
    changes = body.model_dump(exclude_unset=True, exclude={"knowledge"})
    knowledge = _knowledge(body.knowledge) if "knowledge" in body.model_fields_set else None
    return _out(agents.update(db(), principal(), path.id, knowledge=knowledge, **changes))


@bp.delete("/agents/<id>", responses={204: None})
def delete(path: IdPath) -> Any:
    agents.delete(db(), principal(), path.id)
    return "", 204


@numbers_bp.post("/phone-numbers", responses={201: PhoneNumberOut})
def create_number(body: PhoneNumberIn) -> Any:
    row = phone_numbers.create(db(), principal(), number=body.number, agent_id=body.agent_id)
    return PhoneNumberOut.model_validate(row).model_dump(mode="json"), 201


@numbers_bp.get("/phone-numbers", responses={200: ListOut[PhoneNumberOut]})
def list_numbers(query: ListQuery) -> Any:
    return page_out(
        PhoneNumberOut, phone_numbers.list_numbers(db(), principal(), query.limit, query.cursor)
    )


@numbers_bp.delete("/phone-numbers/<id>", responses={204: None})
def delete_number(path: IdPath) -> Any:
    phone_numbers.delete(db(), principal(), path.id)
    return "", 204
