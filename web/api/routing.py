"""How a resource blueprint is declared: prefix, tag, bearer security, documented errors."""

from __future__ import annotations

from typing import Any

from flask_openapi3.blueprint import APIBlueprint
from flask_openapi3.models.tag import Tag

from web.api.schemas.common import Problem

API_PREFIX = "/api/v1"
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
ERRORS: dict[Any, Any] = {
    400: Problem,
    401: Problem,
    404: Problem,
    409: Problem,
    413: Problem,
    415: Problem,
    422: Problem,
}


def resource_blueprint(name: str, *, secured: bool = True) -> APIBlueprint:
    return APIBlueprint(
        name,
        f"web.api.{name}",
        url_prefix=API_PREFIX,
        abp_tags=[Tag(name=name.replace("_", "-"))],
        abp_security=BEARER if secured else None,
        abp_responses=ERRORS,
    )
