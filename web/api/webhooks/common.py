"""What every webhook endpoint shares: the blueprint shape and the reject-by-default rules."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Response, request
from flask_openapi3.blueprint import APIBlueprint
from flask_openapi3.models.tag import Tag

from web.api.problems import problem
from web.api.schemas.common import Problem

log = logging.getLogger("web.webhooks")

ERRORS: dict[Any, Any] = {400: Problem, 401: Problem, 413: Problem, 503: Problem}


def webhook_blueprint(name: str, prefix: str) -> APIBlueprint:
    return APIBlueprint(
        f"webhooks_{name}{prefix.replace('/', '_')}",
        f"web.api.webhooks.{name}",
        url_prefix=f"{prefix}/webhooks",
        abp_tags=[Tag(name="webhooks")],
        abp_responses=ERRORS,
    )


def not_configured(source: str, setting: str) -> Response:
    """A missing secret means reject everything: never accept unsigned input."""
    log.error("%s webhook rejected: %s is not configured", source, setting)
    return problem(503, "Service Unavailable", f"{source} webhooks are not configured")


def rejected(source: str, reason: str, status: int = 401) -> Response:
    log.warning(
        "%s webhook rejected: %s",
        source,
        reason,
        extra={"remote_addr": request.remote_addr, "reason": reason},
    )
    return problem(status, HTTPStatus(status).phrase, reason)


def acknowledged(duplicate: bool = False) -> dict[str, str]:
    return {"status": "duplicate" if duplicate else "accepted"}
