"""HubSpot webhooks: v3 signatures over the public URL, per-event dedupe, contact changes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from flask.testing import FlaskClient
from hubspot.utils.signature import Signature
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.models import CallEvent, Customer
from shared.queue.broker import build_broker
from tests.conftest import add_org
from web.api.app import create_app

SECRET = "hubspot-client-secret"
PUBLIC = "https://switchboard.example.com"
PATH = "/webhooks/hubspot"
CONTACT = 123
PHONE = "+14155550123"

ClientFactory = Callable[[str | None], FlaskClient]


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = build_broker(settings)
    yield broker
    broker.close()


@pytest.fixture
def make_client(
    settings: Settings,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    broker: RedisBroker,
) -> ClientFactory:
    def make(secret: str | None) -> FlaskClient:
        configured = settings.model_copy(
            update={"hubspot_client_secret": secret, "public_web_url": PUBLIC + "/"}
        )
        app = create_app(
            configured, session_factory=session_factory, redis_client=redis_client, broker=broker
        )
        return app.test_client()

    return make


@pytest.fixture
def hubspot_client(make_client: ClientFactory) -> FlaskClient:
    return make_client(SECRET)


def add_customer(db: Session, org_name: str = "Acme", **fields: Any) -> Customer:
    org = add_org(db, org_name)
    values: dict[str, Any] = {
        "phone": PHONE,
        "name": "Grace Hopper",
        "email": "grace@example.com",
        "crm_contact_id": str(CONTACT),
    }
    values.update(fields)
    customer = Customer(organization_id=org.id, **values)
    db.add(customer)
    db.commit()
    return customer


@pytest.fixture
def customer(db: Session) -> Customer:
    return add_customer(db)


def change(prop: str, value: str, event_id: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "subscriptionId": 2501,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": 1700000000000,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": CONTACT,
        "propertyName": prop,
        "propertyValue": value,
        "changeSource": "CRM_UI",
        **extra,
    }


def signed_headers(
    body: bytes,
    uri: str = PUBLIC + PATH,
    secret: str = SECRET,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """Signed with the SDK's own v3 implementation, independent of the code under test."""
    timestamp = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
    signature = Signature.get_signature(
        secret,
        body.decode(),
        signature_version="v3",
        http_uri=uri,
        http_method="POST",
        timestamp=timestamp,
    )
    return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": timestamp}


def deliver(client: FlaskClient, *events: dict[str, Any], path: str = PATH) -> Any:
    body = json.dumps(list(events)).encode()
    return client.post(
        path,
        data=body,
        headers=signed_headers(body, PUBLIC + path),
        content_type="application/json",
    )


def stored_events(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(CallEvent)) or 0


def test_a_signed_name_change_updates_the_linked_customer(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    response = deliver(hubspot_client, change("firstname", "Ada"))
    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted"}
    db.refresh(customer)
    assert customer.name == "Ada Hopper"
    assert db.scalar(select(CallEvent.source)) == "hubspot"


def test_one_delivery_applies_every_event_to_every_tenant_that_linked_the_contact(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    other = add_customer(db, "Globex", phone="+14155550999")
    unlinked = add_customer(db, "Initech", crm_contact_id="999")
    response = deliver(
        hubspot_client,
        change("firstname", "Ada", 1),
        change("lastname", "Lovelace", 2),
        change("email", "Ada@Example.com", 3),
        change("phone", "+1 (415) 555-0177", 4),
        change("company", "Analytical Engines", 5),
    )
    assert response.status_code == 200
    for row in (customer, other):
        db.refresh(row)
        assert (row.name, row.email, row.phone) == (
            "Ada Lovelace",
            "Ada@example.com",
            "+14155550177",
        )
    db.refresh(unlinked)
    assert unlinked.name == "Grace Hopper"
    assert stored_events(db) == 5


def test_a_redelivered_event_is_applied_once(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    deliver(hubspot_client, change("firstname", "Ada", 7))
    deliver(hubspot_client, change("firstname", "Augusta", 8))
    # HubSpot retries event 7 (attemptNumber 1): it must not undo the later change.
    again = deliver(hubspot_client, change("firstname", "Ada", 7, attemptNumber=1))
    assert again.status_code == 200
    db.refresh(customer)
    assert customer.name == "Augusta Hopper"
    assert stored_events(db) == 2


def test_events_that_share_an_event_id_but_not_a_property_are_both_applied(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    # HubSpot documents eventId as "not guaranteed to be unique".
    deliver(hubspot_client, change("firstname", "Ada", 9), change("email", "ada@example.com", 9))
    db.refresh(customer)
    assert (customer.name, customer.email) == ("Ada Hopper", "ada@example.com")


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        ("email", "not-an-email"),
        ("email", "ada@"),
        ("phone", "4155550177"),
        ("phone", "+1 call me"),
        ("phone", ""),
        ("firstname", "Ada\x00"),
    ],
)
def test_invalid_values_are_ignored_and_the_rest_of_the_delivery_applied(
    hubspot_client: FlaskClient, customer: Customer, db: Session, prop: str, value: str
) -> None:
    response = deliver(hubspot_client, change(prop, value, 1), change("lastname", "Lovelace", 2))
    assert response.status_code == 200
    db.refresh(customer)
    assert (customer.email, customer.phone) == ("grace@example.com", PHONE)
    assert customer.name == "Grace Lovelace"


def test_a_phone_another_customer_of_the_tenant_has_is_ignored(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    db.add(Customer(organization_id=customer.organization_id, phone="+14155550177"))
    db.commit()
    assert deliver(hubspot_client, change("phone", "+14155550177")).status_code == 200
    db.refresh(customer)
    assert customer.phone == PHONE


def test_a_deleted_contact_is_unlinked(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    deletion = {
        "eventId": 11,
        "subscriptionType": "contact.deletion",
        "objectId": CONTACT,
        "portalId": 62515,
        "occurredAt": 1700000000000,
        "attemptNumber": 0,
    }
    assert deliver(hubspot_client, deletion).status_code == 200
    db.refresh(customer)
    assert customer.crm_contact_id is None and customer.name == "Grace Hopper"


@pytest.mark.parametrize(
    "tamper",
    [
        "wrong_secret",
        "body_changed",
        "stale",
        "future",
        "no_signature",
        "no_timestamp",
        "signed_for_another_host",
        "signed_over_http",
        "garbage_signature",
    ],
)
def test_unverified_deliveries_are_rejected_and_change_nothing(
    hubspot_client: FlaskClient, customer: Customer, db: Session, tamper: str
) -> None:
    body = json.dumps([change("firstname", "Mallory")]).encode()
    headers = signed_headers(body)
    now_ms = int(time.time() * 1000)
    if tamper == "wrong_secret":
        headers = signed_headers(body, secret="another-app-secret")
    elif tamper == "body_changed":
        body = body.replace(b"Mallory", b"Eve")
    elif tamper == "stale":
        headers = signed_headers(body, timestamp_ms=now_ms - 301_000)
    elif tamper == "future":
        headers = signed_headers(body, timestamp_ms=now_ms + 301_000)
    elif tamper == "no_signature":
        del headers["X-HubSpot-Signature-v3"]
    elif tamper == "no_timestamp":
        del headers["X-HubSpot-Request-Timestamp"]
    elif tamper == "signed_for_another_host":
        headers = signed_headers(body, uri="https://attacker.example.net" + PATH)
    elif tamper == "signed_over_http":
        headers = signed_headers(body, uri=PUBLIC.replace("https", "http") + PATH)
    else:
        headers["X-HubSpot-Signature-v3"] = "not base64!!"
    response = hubspot_client.post(PATH, data=body, headers=headers)
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert stored_events(db) == 0
    db.refresh(customer)
    assert customer.name == "Grace Hopper"


def test_percent_encodings_hubspot_lists_are_decoded_in_the_signed_uri(
    hubspot_client: FlaskClient, customer: Customer
) -> None:
    body = json.dumps([change("firstname", "Ada")]).encode()
    # HubSpot signs with %3A decoded and every other escape (%20 here) left as sent.
    headers = signed_headers(body, PUBLIC + PATH + "?source=crm:v3&note=a%20b")
    response = hubspot_client.post(PATH + "?source=crm%3Av3&note=a%20b", data=body, headers=headers)
    assert response.status_code == 200


def test_signed_garbage_is_400_and_stores_nothing(hubspot_client: FlaskClient, db: Session) -> None:
    for body in (b"not json", b'{"eventId": 1}'):
        response = hubspot_client.post(PATH, data=body, headers=signed_headers(body))
        assert response.status_code == 400
    assert stored_events(db) == 0


def test_a_missing_client_secret_rejects_everything_with_503(
    make_client: ClientFactory, customer: Customer, db: Session
) -> None:
    for secret in (None, "  "):
        response = deliver(make_client(secret), change("firstname", "Ada"))
        assert response.status_code == 503
    db.refresh(customer)
    assert customer.name == "Grace Hopper"


def test_the_webhook_is_also_served_under_the_api_prefix(
    hubspot_client: FlaskClient, customer: Customer, db: Session
) -> None:
    path = "/api/v1" + PATH
    assert deliver(hubspot_client, change("firstname", "Ada"), path=path).status_code == 200
    # The signature covers the path: one signed for the other route is refused.
    body = json.dumps([change("firstname", "Eve", 2)]).encode()
    assert hubspot_client.post(path, data=body, headers=signed_headers(body)).status_code == 401
    db.refresh(customer)
    assert customer.name == "Ada Hopper"
