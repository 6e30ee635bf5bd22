"""POST /calls: validation, billing, Idempotency-Key, and the dial job it queues."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.models import Call, Organization
from shared.queue.broker import build_broker
from tests.api.test_resources import create_agent, routed_agent
from tests.conftest import Tenant, register_tenant
from web.api.app import create_app

NUMBER = "+14155550123"
CALLEE = "+14155550777"


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = build_broker(settings)
    broker.declare_queue("telephony")
    broker.flush_all()
    yield broker
    broker.flush_all()


@pytest.fixture
def app_client(
    settings: Settings, session_factory: sessionmaker[Session], redis_client, broker: RedisBroker
) -> FlaskClient:  # type: ignore[no-untyped-def]
    return create_app(
        settings, session_factory=session_factory, redis_client=redis_client, broker=broker
    ).test_client()


@pytest.fixture
def owner(app_client: FlaskClient) -> Tenant:
    return register_tenant(app_client, "Acme")


@pytest.fixture
def agent_id(app_client: FlaskClient, owner: Tenant) -> str:
    return str(routed_agent(app_client, owner, NUMBER)["id"])


def dial_jobs(broker: RedisBroker) -> list[list[str]]:
    ids = broker.client.lrange("dramatiq:telephony", 0, -1)
    return [
        list(Message.decode(broker.client.hget("dramatiq:telephony.msgs", i)).args) for i in ids
    ]


def test_a_call_is_queued_from_the_agents_number_and_a_dial_job_sent(
    app_client: FlaskClient, owner: Tenant, agent_id: str, broker: RedisBroker, db: Session
) -> None:
    response = app_client.post(
        "/api/v1/calls", json={"agent_id": agent_id, "to": CALLEE}, headers=owner.headers
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["status"], body["direction"], body["from_number"], body["to_number"]) == (
        "queued",
        "outbound",
        NUMBER,
        CALLEE,
    )
    assert dial_jobs(broker) == [[body["id"]]]
    assert db.get(Call, uuid.UUID(body["id"])).customer_id is not None  # type: ignore[union-attr]


def test_idempotency_key_replays_the_same_call_and_rejects_a_different_body(
    app_client: FlaskClient, owner: Tenant, agent_id: str, broker: RedisBroker
) -> None:
    headers = {**owner.headers, "Idempotency-Key": "order-42"}
    first = app_client.post(
        "/api/v1/calls", json={"agent_id": agent_id, "to": CALLEE}, headers=headers
    )
    again = app_client.post(
        "/api/v1/calls", json={"agent_id": agent_id, "to": CALLEE}, headers=headers
    )
    assert first.get_json()["id"] == again.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(dial_jobs(broker)) == 1
    other = app_client.post(
        "/api/v1/calls", json={"agent_id": agent_id, "to": "+14155550778"}, headers=headers
    )
    assert other.status_code == 409


def test_same_key_in_another_tenant_is_independent(
    app_client: FlaskClient, owner: Tenant, agent_id: str
) -> None:
    stranger = register_tenant(app_client, "Globex")
    headers = {**stranger.headers, "Idempotency-Key": "order-42"}
    app_client.post(
        "/api/v1/calls",
        json={"agent_id": agent_id, "to": CALLEE},
        headers={**owner.headers, "Idempotency-Key": "order-42"},
    )
    foreign = app_client.post(
        "/api/v1/calls", json={"agent_id": agent_id, "to": CALLEE}, headers=headers
    )
    assert foreign.status_code == 404  # another tenant's agent, and no replay leak


def test_bad_requests_are_rejected_and_nothing_is_queued(
    app_client: FlaskClient, owner: Tenant, agent_id: str, broker: RedisBroker, db: Session
) -> None:
    numberless = create_agent(app_client, owner, name="No number")
    assert (
        app_client.post(
            "/api/v1/calls",
            json={"agent_id": numberless["id"], "to": CALLEE},
            headers=owner.headers,
        ).status_code
        == 422
    )
    assert (
        app_client.post(
            "/api/v1/calls", json={"agent_id": agent_id, "to": "12345"}, headers=owner.headers
        ).status_code
        == 422
    )
    assert (
        app_client.post(
            "/api/v1/calls",
            json={"agent_id": str(uuid.uuid4()), "to": CALLEE},
            headers=owner.headers,
        ).status_code
        == 404
    )
    assert dial_jobs(broker) == []
    assert db.scalars(select(Call)).all() == []


def test_a_suspended_organization_cannot_place_calls(
    app_client: FlaskClient, owner: Tenant, agent_id: str, broker: RedisBroker, db: Session
) -> None:
    db.execute(
        update(Organization).values(billing_status="suspended", subscription_status="unpaid")
    )
    db.flush()
    response = app_client.post(
        "/api/v1/calls", json={"agent_id": agent_id, "to": CALLEE}, headers=owner.headers
    )
    assert response.status_code == 402 and response.content_type == "application/problem+json"
    assert dial_jobs(broker) == []
