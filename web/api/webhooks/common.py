"""What every webhook endpoint shares: the blueprint shape and the reject-by-default rules."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from flask import Response, request
from flask_openapi3.blueprint import APIBlueprint
from flask_openapi3.models.tag import Tag

from shared.providers.webhooks import InvalidWebhook
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


E = TypeVar("E")


def verified_event(
    source: str,
    secret: str | None,
    setting: str,
    verify: Callable[[bytes, str], None],
    parse: Callable[[bytes], E],
) -> E | Response:
    """The parsed event of a delivery whose signature checks out, else the rejection to
    send: 503 with no secret configured, 401 unverified, 400 verified but malformed.
    Verification runs on the raw bytes, before anything parses them."""
    if not secret or not secret.strip():
        return not_configured(source, setting)
    body = request.get_data(cache=False)
    try:
        verify(body, secret)
    except InvalidWebhook as exc:
        return rejected(source, str(exc))
    try:
        return parse(body)
    except InvalidWebhook as exc:
        return rejected(source, str(exc), status=400)


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
