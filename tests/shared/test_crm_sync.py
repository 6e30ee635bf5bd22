"""CRM sync of calls: ids stored once, nothing created twice, and the worker actor."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from sqlalchemy.orm import Session, sessionmaker

from scripts.fakes.hubspot_api import CALLS, CONTACTS, FakeHubSpot, start_fake_hubspot
from shared.config import Settings
from shared.db.models import Call, Customer
from shared.providers.crm.hubspot import HubSpotClient, engagement_marker, engagement_title
from shared.services import crm_sync
from tests.conftest import add_call, add_org
from workers import runtime
from workers.middleware import DatabaseSession

TOKEN = "pat-na1-test"
CALLER = "+14155550123"
NUMBER = "+14155550100"


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    server = start_fake_hubspot(TOKEN)
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeHubSpot) -> HubSpotClient:
    return HubSpotClient(TOKEN, fake.url)


@pytest.fixture
def call(db: Session) -> Call:
    org = add_org(db)
    customer = Customer(
        organization_id=org.id, phone=CALLER, name="Ada Lovelace", email="ada@example.com"
    )
    db.add(customer)
    db.flush()
    return add_call(
        db,
        org.id,
        customer_id=customer.id,
        from_number=CALLER,
        to_number=NUMBER,
        status="completed",
        outcome="resolved",
        summary="caller: where is my order | agent: it ships today",
        duration_seconds=42.0,
        ended_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def customer_of(db: Session, call: Call) -> Customer:
    customer = db.get(Customer, call.customer_id)
    assert customer is not None
    return customer


def test_sync_call_creates_the_contact_and_engagement_and_stores_their_ids(
    db: Session, call: Call, fake: FakeHubSpot, client: HubSpotClient
) -> None:
    engagement_id = crm_sync.sync_call(db, call, client)

    assert engagement_id is not None and call.crm_engagement_id == engagement_id
    (contact_id,) = fake.contacts
    assert customer_of(db, call).crm_contact_id == contact_id
    assert fake.contacts[contact_id].properties["phone"] == CALLER
    engagement = fake.engagements[engagement_id]
    assert engagement.properties["hs_call_title"] == engagement_title(engagement_marker(call.id))
    assert engagement.properties["hs_call_duration"] == "42000"
    assert engagement.associations[0]["to"] == {"id": contact_id}


def test_running_sync_call_twice_creates_nothing_more(
    db: Session, call: Call, fake: FakeHubSpot, client: HubSpotClient
) -> None:
    first = crm_sync.sync_call(db, call, client)
    db.commit()
    requests_after_first = len(fake.requests)

    assert crm_sync.sync_call(db, call, client) == first
    assert len(fake.requests) == requests_after_first
    assert (len(fake.contacts), len(fake.engagements)) == (1, 1)


def test_an_existing_contact_with_the_phone_is_linked_instead_of_created(
    db: Session, call: Call, fake: FakeHubSpot, client: HubSpotClient
) -> None:
    existing = fake.add_contact(phone=CALLER)
    crm_sync.sync_call(db, call, client)
    assert customer_of(db, call).crm_contact_id == existing
    assert fake.received(CONTACTS) == []


def test_an_engagement_created_before_a_crash_is_reused_not_created_again(
    db: Session, call: Call, fake: FakeHubSpot, client: HubSpotClient
) -> None:
    # A worker created the engagement in HubSpot, then died before committing its id.
    contact_id = fake.add_contact(phone=CALLER)
    before = fake.add_engagement(
        contact_id, hs_call_title=engagement_title(engagement_marker(call.id))
    )

    assert crm_sync.sync_call(db, call, client) == before
    assert call.crm_engagement_id == before
    assert fake.received(CALLS) == []
    assert list(fake.engagements) == [before]


def test_a_call_without_a_customer_is_skipped(
    db: Session, call: Call, fake: FakeHubSpot, client: HubSpotClient
) -> None:
    call.customer_id = None
    assert crm_sync.sync_call(db, call, client) is None
    assert fake.requests == []


# The actor, run the way a worker runs it: one session per message, committed after.


@pytest.fixture
def worker(
    settings: Settings, fake: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    from shared.queue.broker import build_broker

    configured = settings.model_copy(
        update={"hubspot_access_token": TOKEN, "hubspot_api_url": fake.url}
    )
    monkeypatch.setattr(runtime, "_runtime", runtime.Runtime(configured, build_broker(settings)))
    yield configured


def run_actor(session_factory: sessionmaker[Session], call_id: uuid.UUID) -> None:
    from workers.actors.crm import sync_call_to_crm

    middleware = DatabaseSession(session_factory)
    message = MessageProxy(
        dramatiq.Message(
            queue_name="crm",
            actor_name="sync_call_to_crm",
            args=(str(call_id),),
            kwargs={},
            options={},
        )
    )
    broker = runtime.current().broker
    middleware.before_process_message(broker, message)
    try:
        sync_call_to_crm.fn(str(call_id))
    except BaseException as exc:
        middleware.after_process_message(broker, message, exception=exc)
        raise
    middleware.after_process_message(broker, message)


def test_the_actor_syncs_a_call_and_commits_the_ids(
    db: Session,
    call: Call,
    fake: FakeHubSpot,
    worker: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    run_actor(session_factory, call.id)
    db.expire_all()
    stored = db.get(Call, call.id)
    assert stored is not None and stored.crm_engagement_id in fake.engagements
    assert customer_of(db, stored).crm_contact_id in fake.contacts


def test_the_actor_does_nothing_when_hubspot_is_not_configured(
    call: Call,
    fake: FakeHubSpot,
    worker: Settings,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unconfigured = worker.model_copy(update={"hubspot_access_token": None})
    monkeypatch.setattr(runtime.current(), "settings", unconfigured)
    with caplog.at_level(logging.INFO, logger="workers.actors.crm"):
        run_actor(session_factory, call.id)
    assert "CRM not configured" in caplog.text
    assert fake.requests == []
