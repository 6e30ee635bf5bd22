"""Stripe webhooks: HMAC verification on the raw body, idempotent delivery, billing rules."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import stripe
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.models import CallEvent, Organization
from shared.errors import PaymentRequired
from shared.services import billing
from tests.conftest import add_org
from web.api.app import create_app

SECRET = "whsec_test"
PATHS = ("/webhooks/stripe", "/api/v1/webhooks/stripe")
PATH = PATHS[0]

ClientFactory = Callable[[str | None], FlaskClient]


@pytest.fixture
def make_client(
    settings: Settings, session_factory: sessionmaker[Session], redis_client: redis.Redis
) -> ClientFactory:
    def make(secret: str | None) -> FlaskClient:
        configured = settings.model_copy(update={"stripe_webhook_secret": secret})
        app = create_app(configured, session_factory=session_factory, redis_client=redis_client)
        return app.test_client()

    return make


@pytest.fixture
def stripe_client(make_client: ClientFactory) -> FlaskClient:
    return make_client(SECRET)


@pytest.fixture
def org(db: Session) -> Organization:
    row = add_org(db)
    db.commit()
    return row


def _sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=timestamp
    )
    return header


def _post(
    client: FlaskClient,
    payload: dict[str, Any] | bytes,
    *,
    path: str = PATH,
    secret: str = SECRET,
    timestamp: int | None = None,
) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(
        path,
        data=body,
        headers={"Stripe-Signature": _sign(body, secret, timestamp)},
        content_type="application/json",
    )


def _event(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()) if created is None else created,
        "type": event_type,
        "livemode": False,
        "data": {"object": obj},
    }


def _subscription(
    organization_id: Any,
    status: str = "active",
    *,
    event_type: str = "customer.subscription.updated",
    lookup_key: str | None = "pro_monthly",
    customer: str = "cus_acme",
    **kwargs: Any,
) -> dict[str, Any]:
    metadata = {} if organization_id is None else {"organization_id": str(organization_id)}
    obj = {
        "id": "sub_acme",
        "object": "subscription",
        "customer": customer,
        "status": status,
        "metadata": metadata,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "price": {"id": "price_1", "lookup_key": lookup_key, "nickname": None},
                }
            ],
        },
    }
    return _event(event_type, obj, **kwargs)


def _payment_failed(invoice: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return _event(
        "invoice.payment_failed",
        {"id": "in_1", "object": "invoice", "customer": "cus_acme", **invoice},
        **kwargs,
    )


def _fresh(db: Session, org: Organization) -> Organization:
    db.expire_all()
    row = db.get(Organization, org.id)
    assert row is not None
    return row


def _snapshot(db: Session, org: Organization) -> tuple[Any, ...]:
    row = _fresh(db, org)
    return (
        row.plan,
        row.billing_status,
        row.stripe_customer_id,
        row.subscription_status,
        row.past_due_since,
        row.billing_updated_at,
    )


def _stored(db: Session) -> int:
    return db.scalar(select(func.count()).where(CallEvent.source == "stripe")) or 0


@pytest.mark.parametrize("path", PATHS)
def test_a_signed_subscription_created_puts_the_organization_on_its_paid_plan(
    stripe_client: FlaskClient, db: Session, org: Organization, path: str
) -> None:
    event = _subscription(org.id, event_type="customer.subscription.created")
    response = _post(stripe_client, event, path=path)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "accepted"}
    row = _fresh(db, org)
    assert (row.plan, row.billing_status, row.subscription_status) == (
        "pro_monthly",
        "active",
        "active",
    )
    assert row.stripe_customer_id == "cus_acme"
    assert row.billing_updated_at == datetime.fromtimestamp(event["created"], UTC)
    stored = db.scalars(select(CallEvent).where(CallEvent.source == "stripe")).one()
    assert (stored.event_id, stored.event_type) == (event["id"], event["type"])
    assert stored.organization_id == org.id
    billing.ensure_can_place_calls(db, org.id)


def test_the_plan_falls_back_to_the_price_nickname_then_plan_id_then_paid(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    event = _subscription(org.id, lookup_key=None)
    event["data"]["object"]["items"]["data"][0]["price"]["nickname"] = "Growth"
    assert _post(stripe_client, event).status_code == 200
    assert _fresh(db, org).plan == "Growth"
    event = _subscription(org.id, lookup_key=None)
    event["data"]["object"]["items"]["data"][0]["plan"] = {"id": "plan_legacy"}
    assert _post(stripe_client, event).status_code == 200
    assert _fresh(db, org).plan == "plan_legacy"
    assert _post(stripe_client, _subscription(org.id, lookup_key=None)).status_code == 200
    assert _fresh(db, org).plan == "paid"


def test_a_past_due_subscription_may_call_within_the_grace_period_and_not_after(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    created = int(time.time())
    assert (
        _post(stripe_client, _subscription(org.id, "past_due", created=created)).status_code == 200
    )
    row = _fresh(db, org)
    since = datetime.fromtimestamp(created, UTC)
    assert (row.billing_status, row.past_due_since) == ("past_due", since)

    billing.ensure_can_place_calls(db, org.id)
    billing.ensure_can_place_calls(db, org.id, now=since + billing.PAST_DUE_GRACE)
    with pytest.raises(PaymentRequired, match="grace period"):
        billing.ensure_can_place_calls(
            db, org.id, now=since + billing.PAST_DUE_GRACE + timedelta(seconds=1)
        )

    # Still past due a day later: the grace period keeps its original start.
    later = _subscription(org.id, "past_due", created=created + 1)
    assert _post(stripe_client, later).status_code == 200
    assert _fresh(db, org).past_due_since == since

    # Paid again: calls are allowed and the grace period is cleared.
    assert _post(stripe_client, _subscription(org.id, created=created + 2)).status_code == 200
    row = _fresh(db, org)
    assert (row.billing_status, row.past_due_since) == ("active", None)
    billing.ensure_can_place_calls(db, org.id, now=since + timedelta(days=30))


@pytest.mark.parametrize("status", ["unpaid", "canceled", "incomplete_expired", "paused"])
def test_an_unpaid_canceled_expired_or_paused_subscription_suspends_calling(
    stripe_client: FlaskClient, db: Session, org: Organization, status: str
) -> None:
    assert _post(stripe_client, _subscription(org.id, status)).status_code == 200
    row = _fresh(db, org)
    assert (row.billing_status, row.subscription_status) == ("suspended", status)
    with pytest.raises(PaymentRequired, match="suspended"):
        billing.ensure_can_place_calls(db, org.id)


def test_an_incomplete_subscription_keeps_the_prior_billing_status_and_plan(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    assert _post(stripe_client, _subscription(org.id, "incomplete")).status_code == 200
    row = _fresh(db, org)
    assert (row.plan, row.billing_status, row.subscription_status) == (
        "free",
        "active",
        "incomplete",
    )


def test_a_deleted_subscription_returns_the_organization_to_the_free_plan(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    now = int(time.time())
    assert (
        _post(stripe_client, _subscription(org.id, "unpaid", created=now - 10)).status_code == 200
    )
    deleted = _subscription(
        org.id, "canceled", event_type="customer.subscription.deleted", created=now
    )
    assert _post(stripe_client, deleted).status_code == 200
    row = _fresh(db, org)
    assert (row.plan, row.billing_status, row.subscription_status, row.past_due_since) == (
        "free",
        "active",
        "canceled",
        None,
    )
    billing.ensure_can_place_calls(db, org.id)


@pytest.mark.parametrize(
    "invoice",
    [
        {"parent": {"subscription_details": {"metadata": {"organization_id": "{org}"}}}},
        {"subscription_details": {"metadata": {"organization_id": "{org}"}}},
        {"metadata": {"organization_id": "{org}"}},
        {"customer": "cus_acme"},
    ],
    ids=["parent-subscription-metadata", "subscription-details", "invoice-metadata", "customer"],
)
def test_a_failed_invoice_payment_starts_the_grace_period(
    stripe_client: FlaskClient, db: Session, org: Organization, invoice: dict[str, Any]
) -> None:
    org.stripe_customer_id = "cus_acme"
    db.commit()
    invoice = json.loads(json.dumps(invoice).replace("{org}", str(org.id)))
    created = int(time.time())
    assert _post(stripe_client, _payment_failed(invoice, created=created)).status_code == 200
    row = _fresh(db, org)
    assert row.billing_status == "past_due"
    assert row.past_due_since == datetime.fromtimestamp(created, UTC)
    billing.ensure_can_place_calls(db, org.id)

    # Stripe sends one per retry; the grace period does not restart.
    again = _payment_failed(invoice, created=created + 60)
    assert _post(stripe_client, again).status_code == 200
    assert _fresh(db, org).past_due_since == datetime.fromtimestamp(created, UTC)


def test_a_failed_invoice_payment_leaves_a_suspended_organization_suspended(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    now = int(time.time())
    assert _post(stripe_client, _subscription(org.id, "unpaid", created=now - 1)).status_code == 200
    failed = _payment_failed({"metadata": {"organization_id": str(org.id)}}, created=now)
    assert _post(stripe_client, failed).status_code == 200
    row = _fresh(db, org)
    assert (row.billing_status, row.past_due_since) == ("suspended", None)


def test_a_duplicate_delivery_is_processed_once_even_with_a_fresh_valid_signature(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    first = _subscription(org.id, event_id="evt_once")
    assert _post(stripe_client, first).status_code == 200
    before = _snapshot(db, org)

    conflicting = _subscription(org.id, "unpaid", event_id="evt_once", created=first["created"] + 5)
    response = _post(stripe_client, conflicting, timestamp=int(time.time()) + 1)
    assert response.status_code == 200
    assert response.get_json() == {"status": "duplicate"}
    assert _snapshot(db, org) == before
    assert _stored(db) == 1


def test_an_older_event_arriving_after_a_newer_one_is_ignored(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    now = int(time.time())
    assert _post(stripe_client, _subscription(org.id, "active", created=now)).status_code == 200
    before = _snapshot(db, org)
    late = _subscription(org.id, "past_due", created=now - 60, lookup_key="old_plan")
    assert _post(stripe_client, late).status_code == 200
    assert _snapshot(db, org) == before
    late_invoice = _payment_failed({"metadata": {"organization_id": str(org.id)}}, created=now - 30)
    assert _post(stripe_client, late_invoice).status_code == 200
    assert _snapshot(db, org) == before
    assert _stored(db) == 3  # stored (so not redelivered), just not applied


def test_a_header_with_two_v1_signatures_passes_when_only_the_second_matches(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    body = json.dumps(_subscription(org.id)).encode()
    header = _sign(body)
    timestamp, valid = header.split(",")
    wrong = _sign(body, secret="whsec_old").split(",")[1]
    response = stripe_client.post(
        PATH, data=body, headers={"Stripe-Signature": f"{timestamp},{wrong},{valid}"}
    )
    assert response.status_code == 200, response.get_json()
    assert _fresh(db, org).plan == "pro_monthly"


def _rejections() -> list[Any]:
    def wrong_secret(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {"Stripe-Signature": _sign(body, secret="whsec_wrong")}

    def changed_after_signing(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body.replace(b'"active"', b'"trialing"'), {"Stripe-Signature": _sign(body)}

    def stale(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {"Stripe-Signature": _sign(body, timestamp=int(time.time()) - 301)}

    def missing_header(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {}

    def malformed_header(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {"Stripe-Signature": "v1=deadbeef"}

    def not_json(body: bytes) -> tuple[bytes, dict[str, str]]:
        text = b"this is not json"
        return text, {"Stripe-Signature": _sign(text)}

    def not_an_event(body: bytes) -> tuple[bytes, dict[str, str]]:
        text = b'{"id": "evt_1", "type": "customer.subscription.updated"}'
        return text, {"Stripe-Signature": _sign(text)}

    return [
        pytest.param(wrong_secret, 401, "bad signature", id="wrong-secret"),
        pytest.param(changed_after_signing, 401, "bad signature", id="body-changed"),
        pytest.param(stale, 401, "stale timestamp", id="timestamp-301s-old"),
        pytest.param(missing_header, 401, "missing Stripe-Signature", id="missing-header"),
        pytest.param(malformed_header, 401, "bad signature", id="malformed-header"),
        pytest.param(not_json, 400, "not JSON", id="signed-non-json"),
        pytest.param(not_an_event, 400, "not a Stripe event", id="signed-non-event"),
    ]


@pytest.mark.parametrize(("tamper", "status", "reason"), _rejections())
def test_a_delivery_that_fails_verification_is_rejected_and_nothing_is_stored(
    stripe_client: FlaskClient,
    db: Session,
    org: Organization,
    tamper: Callable[[bytes], tuple[bytes, dict[str, str]]],
    status: int,
    reason: str,
) -> None:
    before = _snapshot(db, org)
    body, headers = tamper(json.dumps(_subscription(org.id, "active")).encode())
    response = stripe_client.post(PATH, data=body, headers=headers)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert reason in response.get_json()["detail"]
    assert _stored(db) == 0
    assert _snapshot(db, org) == before


def test_an_unset_secret_refuses_even_a_correctly_signed_request_with_503(
    make_client: ClientFactory, db: Session, org: Organization
) -> None:
    client = make_client(None)
    response = _post(client, _subscription(org.id))
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert _stored(db) == 0
    assert _fresh(db, org).plan == "free"


@pytest.mark.parametrize(
    "organization_id", [uuid.UUID(int=1), "not-a-uuid", None], ids=["unknown", "malformed", "none"]
)
def test_an_event_for_an_unknown_organization_is_acknowledged_and_changes_nothing(
    stripe_client: FlaskClient, db: Session, org: Organization, organization_id: Any
) -> None:
    before = _snapshot(db, org)
    response = _post(stripe_client, _subscription(organization_id))
    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted"}
    assert _snapshot(db, org) == before
    assert _stored(db) == 1


def test_an_invoice_for_an_unknown_customer_is_acknowledged_and_changes_nothing(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    before = _snapshot(db, org)
    response = _post(stripe_client, _payment_failed({"customer": "cus_nobody"}))
    assert response.status_code == 200
    assert _snapshot(db, org) == before


def test_a_customer_already_linked_to_another_organization_is_not_moved(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    add_org(db, "Globex", stripe_customer_id="cus_acme")
    db.commit()
    before = _snapshot(db, org)
    assert _post(stripe_client, _subscription(org.id, customer="cus_acme")).status_code == 200
    assert _snapshot(db, org) == before


def test_an_unknown_event_type_is_stored_and_acknowledged(
    stripe_client: FlaskClient, db: Session, org: Organization
) -> None:
    before = _snapshot(db, org)
    event = _event("charge.succeeded", {"id": "ch_1", "object": "charge"})
    response = _post(stripe_client, event)
    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted"}
    assert _stored(db) == 1
    assert _snapshot(db, org) == before


@pytest.mark.parametrize("path", PATHS)
def test_a_body_over_one_mebibyte_is_refused_with_413(
    stripe_client: FlaskClient, db: Session, path: str
) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = stripe_client.post(
        path,
        data=body,
        headers={"Stripe-Signature": _sign(body)},
        content_type="application/json",
    )
    assert response.status_code == 413
    assert _stored(db) == 0
