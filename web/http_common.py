"""What both HTTP processes (web and voice) share: request ids, metrics, /healthz, /metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import JSONProvider
from pydantic import BaseModel

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


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: several times faster than the standard library on
    list responses, and it writes UUIDs and UTC datetimes ("…Z") exactly as pydantic
    does, so rows can be returned as they come from the database."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=_to_json, option=orjson.OPT_UTC_Z).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = orjson.dumps(
            self._prepare_response_obj(args, kwargs), default=_to_json, option=orjson.OPT_UTC_Z
        )
        return Response(body, mimetype="application/json")


def _to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, content_type=content_type)


def healthz() -> dict[str, str]:
    return {"status": "ok"}


def install(app: Flask, process: str) -> None:
    app.json = OrjsonProvider(app)
    app.before_request(_start)
    app.after_request(_finish(process))
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/metrics", "metrics", metrics)
