"""Malformed, mistyped, oversized and hostile input: a clear problem+json, nothing changed."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Agent
from tests.api.test_resources import AGENT
from tests.conftest import Tenant


def _agents(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(Agent)) or 0


def _assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == status
    return body


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ('{"name": "x",', "application/json", 400),
        ("name=x", "application/x-www-form-urlencoded", 415),
        ("[1, 2]", "application/json", 422),
        ('"just a string"', "application/json", 422),
    ],
)
def test_unparseable_bodies(
    client: FlaskClient, tenant: Tenant, db: Session, data: str, content_type: str, status: int
) -> None:
    response = client.post(
        "/api/v1/agents", data=data, content_type=content_type, headers=tenant.headers
    )
    _assert_problem(response, status)
    assert _agents(db) == 0


def test_field_errors_name_each_field(client: FlaskClient, tenant: Tenant, db: Session) -> None:
    response = client.post(
        "/api/v1/agents",
        json={**AGENT, "name": 42, "language": "english", "surprise": True},
        headers=tenant.headers,
    )
    body = _assert_problem(response, 422)
    assert {e["field"] for e in body["errors"]} == {"name", "language", "surprise"}
    assert _agents(db) == 0


def test_oversized_body_is_413(client: FlaskClient, tenant: Tenant, db: Session) -> None:
    huge = {**AGENT, "persona": "x" * (1024 * 1024 + 1)}
    _assert_problem(client.post("/api/v1/agents", json=huge, headers=tenant.headers), 413)
    assert _agents(db) == 0


def test_invalid_uuid_in_path_is_a_field_error(client: FlaskClient, tenant: Tenant) -> None:
    body = _assert_problem(client.get("/api/v1/agents/not-a-uuid", headers=tenant.headers), 422)
    assert body["errors"][0]["field"] == "id"


def test_unknown_route_is_a_problem(client: FlaskClient, tenant: Tenant) -> None:
    _assert_problem(client.get("/api/v1/nothing-here", headers=tenant.headers), 404)


def test_bad_cursor_and_limit(client: FlaskClient, tenant: Tenant) -> None:
    _assert_problem(client.get("/api/v1/agents?cursor=%%%garbage", headers=tenant.headers), 422)
    _assert_problem(client.get("/api/v1/agents?limit=100000", headers=tenant.headers), 422)


def test_sql_looking_strings_are_just_text(client: FlaskClient, tenant: Tenant) -> None:
    hostile = "Robert'); DROP TABLE agents;--"
    created = client.post("/api/v1/agents", json={**AGENT, "name": hostile}, headers=tenant.headers)
    assert created.status_code == 201 and created.get_json()["name"] == hostile
    listed = client.get("/api/v1/customers?phone=%27%20OR%201%3D1--", headers=tenant.headers)
    _assert_problem(listed, 422)
    assert (
        client.get("/api/v1/agents", headers=tenant.headers).get_json()["data"][0]["name"]
        == hostile
    )
