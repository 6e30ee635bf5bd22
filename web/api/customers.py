"""/customers."""

from __future__ import annotations

from typing import Any

from flask import current_app

from shared.providers.registry import build_embeddings
from shared.services import customer_context, customers
from web.api.context import db, principal
from web.api.routing import resource_blueprint
from web.api.schemas.common import IdPath, ListOut, page_out
from web.api.schemas.customers import (
    ContextQuery,
    CustomerContextOut,
    CustomerIn,
    CustomerOut,
    CustomerPatch,
    CustomerQuery,
)

bp = resource_blueprint("customers")


def _out(customer: Any) -> dict[str, Any]:
    return CustomerOut.model_validate(customer).model_dump(mode="json")


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    if "metadata" in fields:  # `metadata` is reserved on SQLAlchemy models
        fields["metadata_"] = fields.pop("metadata")
    return fields


@bp.post("/customers", responses={201: CustomerOut})
def create(body: CustomerIn) -> Any:
    return _out(customers.create(db(), principal(), **_columns(body.model_dump()))), 201


@bp.get("/customers", responses={200: ListOut[CustomerOut]})
def list_(query: CustomerQuery) -> Any:
    page = customers.list_customers(db(), principal(), query.limit, query.cursor, phone=query.phone)
    return page_out(CustomerOut, page)


@bp.get("/customers/<id>", responses={200: CustomerOut})
def get(path: IdPath) -> Any:
    return _out(customers.get(db(), principal(), path.id))


@bp.patch("/customers/<id>", responses={200: CustomerOut})
def patch(path: IdPath, body: CustomerPatch) -> Any:
    changes = _columns(body.model_dump(exclude_unset=True))
    return _out(customers.update(db(), principal(), path.id, **changes))


@bp.delete("/customers/<id>", responses={204: None})
def delete(path: IdPath) -> Any:
    customers.delete(db(), principal(), path.id)
    return "", 204


@bp.get("/customers/<id>/context", responses={200: CustomerContextOut})
def context(path: IdPath, query: ContextQuery) -> Any:
    """Profile, recent calls, memories ranked by similarity to `query`, an approach."""
    vector = _embed_query(query.query) if query.query else None
    found = customer_context.build(db(), principal(), path.id, vector)
    out = {
        "customer_profile": found.customer,
        "recent_calls": found.recent_calls,
        "relevant_memories": found.memories,
        "suggested_approach": found.suggested_approach,
    }
    return CustomerContextOut.model_validate(out, from_attributes=True).model_dump(mode="json")


def _embed_query(text: str) -> list[float]:
    provider = current_app.extensions.get("embeddings")
    if provider is None:  # built on first use: most web processes never load the model
        provider = current_app.extensions["embeddings"] = build_embeddings(
            current_app.config["SETTINGS"]
        )
    return provider.embed([text], "query")[0]
