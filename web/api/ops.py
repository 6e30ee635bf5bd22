"""/readyz and /openapi.json (healthz and metrics come from web.http_common)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app
from sqlalchemy import text

from web.api.context import db
from web.api.problems import problem

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/readyz")
def readyz() -> Any:
    checks = {"database": _check_database(), "redis": _check_redis()}
    if all(checks.values()):
        return {"status": "ready", "checks": checks}
    failed = ", ".join(name for name, ok in checks.items() if not ok)
    return problem(503, "Service Unavailable", f"not reachable: {failed}", checks=checks)


@bp.get("/openapi.json")
def openapi() -> Any:
    return current_app.api_doc  # type: ignore[attr-defined]


def _check_database() -> bool:
    try:
        db().execute(text("SELECT 1"))
        return True
    except Exception:
        log.warning("readiness: database unreachable", exc_info=True)
        return False


def _check_redis() -> bool:
    try:
        return bool(current_app.extensions["redis"].ping())
    except Exception:
        log.warning("readiness: redis unreachable", exc_info=True)
        return False
