"""Health, readiness, metrics, request ids in responses and logs, and the OpenAPI document."""

from __future__ import annotations

import json
import logging

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.observability.logging import setup_logging
from web.api.app import create_app
from web.api.routing import API_PREFIX


def test_healthz_and_readyz(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {
        "database": True,
        "redis": True,
    }


def test_readyz_is_503_when_redis_is_unreachable(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    client = create_app(settings, session_factory=session_factory, redis_client=dead).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": True, "redis": False}


def test_metrics_count_requests_by_route_and_status(client: FlaskClient) -> None:
    client.get("/api/v1/agents")  # 401
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'http_requests_total{method="GET",process="web",route="/api/v1/agents",status="401"}'
        in text
    )
    assert "http_request_duration_seconds_bucket" in text


def test_request_id_is_echoed_and_logged(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("web", fmt="json")
    try:
        given = client.get("/healthz", headers={"X-Request-ID": "req-123"})
        generated = client.get("/healthz")
        hostile = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    finally:
        logging.getLogger().handlers.clear()
    assert given.headers["X-Request-ID"] == "req-123"
    assert len(generated.headers["X-Request-ID"]) == 32
    assert hostile.headers["X-Request-ID"] != "bad id <script>"
    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert any(line["request_id"] == "req-123" and line["status"] == 200 for line in lines)


def test_openapi_documents_every_api_route(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    for rule in client.application.url_map.iter_rules():
        if not rule.rule.startswith(API_PREFIX):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)
    create_agent = spec["paths"]["/api/v1/agents"]["post"]
    assert "201" in create_agent["responses"] and "422" in create_agent["responses"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
