"""RFC 9457 problem+json responses, and the error handlers that produce them (registered once)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from shared.errors import (
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    PaymentRequired,
    Unauthorized,
)
from shared.resilience import ProviderUnavailable

log = logging.getLogger(__name__)

_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    PaymentRequired: 402,
    InvalidInput: 422,
}


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def validation_problem(exc: ValidationError) -> Response:
    errors = [
        {
            "field": ".".join(str(part) for part in err["loc"]) or "body",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]
    return problem(422, "Validation failed", "the request has invalid fields", errors=errors)


def _domain(exc: DomainError) -> Response:
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        extra["errors"] = [{"field": exc.field, "message": str(exc), "type": "value_error"}]
    return problem(status, exc.title, str(exc), **extra)


def _http(exc: HTTPException) -> Response:
    if exc.response is not None:  # abort(response): already a finished problem
        return exc.response  # type: ignore[return-value]
    return problem(exc.code or 500, exc.name, exc.description or exc.name)


def _unavailable(exc: ProviderUnavailable) -> Response:
    log.warning("provider unavailable: %s", exc)
    return problem(503, "Service Unavailable", f"{exc.provider} is unavailable; try again shortly")


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return problem(500, "Internal Server Error", "an unexpected error occurred")


def register(app: Flask) -> None:
    app.register_error_handler(DomainError, _domain)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(ProviderUnavailable, _unavailable)
    app.register_error_handler(Exception, _unexpected)
