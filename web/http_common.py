"""What both HTTP processes (web and voice) share: request ids, metrics, /healthz, /metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from shared.observability.logging import request_id
from shared.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS, exposition

log = logging.getLogger("web.request")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _start() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
    g.started = time.perf_counter()
    request_id.set(g.request_id)


def _finish(process: str):  # type: ignore[no-untyped-def]
    def finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule else "unmatched"
        labels = (process, request.method, route, str(response.status_code))
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        HTTP_REQUESTS.labels(*labels).inc()
        HTTP_LATENCY.labels(*labels).observe(elapsed)
        log.info(
            "%s %s %s",
            request.method,
            route,
            response.status_code,
            extra={"status": response.status_code, "duration_ms": round(elapsed * 1000, 2)},
        )
        return response

    return finish


def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, content_type=content_type)


def healthz() -> dict[str, str]:
    return {"status": "ok"}


def install(app: Flask, process: str) -> None:
    app.before_request(_start)
    app.after_request(_finish(process))
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/metrics", "metrics", metrics)
