"""Telnyx webhooks: verification, dedupe, the inbound lifecycle and hostile deliveries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from dramatiq.brokers.redis import RedisBroker
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from scripts.fakes.telnyx_events import TelnyxSigner, call_payload, envelope
from shared.config import Settings
from shared.db.models import Call, CallEvent, Customer
from shared.providers.telephony.telnyx_webhooks import TOLERANCE_SECONDS
from shared.queue.broker import build_broker
from tests.api.test_resources import routed_agent
from tests.conftest import Tenant, register_tenant
from web.api.app import create_app

NUMBER = "+14155550123"
OUTSIDE_TOLERANCE_S = TOLERANCE_SECONDS + 10
CALLER = "+14155550999"


@pytest.fixture
def signer() -> TelnyxSigner:
    return TelnyxSigner()


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = build_broker(settings)
    for queue in ("telephony", "post_call"):
        broker.declare_queue(queue)
    broker.flush_all()
    yield broker
    broker.flush_all()


@pytest.fixture
def telnyx_client(
    settings: Settings,
    session_factory: sessionmaker[Session],
    redis_client,
    signer: TelnyxSigner,
    broker: RedisBroker,
) -> FlaskClient:  # type: ignore[no-untyped-def]
    configured = settings.model_copy(update={"telnyx_public_key": signer.public_key})
    return create_app(
        configured, session_factory=session_factory, redis_client=redis_client, broker=broker
    ).test_client()


@pytest.fixture
def routed(telnyx_client: FlaskClient) -> Tenant:
    owner = register_tenant(telnyx_client, "Acme")
    routed_agent(telnyx_client, owner, NUMBER)
    return owner


def deliver(
    client: FlaskClient,
    signer: TelnyxSigner,
    event_type: str,
    payload: dict,
    event_id: str | None = None,
    timestamp: int | None = None,
):  # type: ignore[no-untyped-def]
    body = envelope(event_type, payload, event_id)
    return client.post("/webhooks/telnyx", data=body, headers=signer.headers(body, timestamp))


def queued(broker: RedisBroker, queue: str) -> list[tuple[str, list]]:
    client = broker.client
    ids = client.lrange(f"dramatiq:{queue}", 0, -1)
    from dramatiq import Message

    messages = [Message.decode(client.hget(f"dramatiq:{queue}.msgs", mid)) for mid in ids]
    return [(m.actor_name, list(m.args)) for m in messages]


def test_inbound_call_is_stored_and_answered_through_the_queue(
    telnyx_client: FlaskClient,
    signer: TelnyxSigner,
    routed: Tenant,
    broker: RedisBroker,
    db: Session,
) -> None:
    response = deliver(
        telnyx_client, signer, "call.initiated", call_payload("v3:abc", from_=CALLER, to=NUMBER)
    )
    assert response.status_code == 200
    call = db.scalars(select(Call)).one()
    assert (call.status, call.direction, call.from_number, call.to_number) == (
        "ringing",
        "inbound",
        CALLER,
        NUMBER,
    )
    assert db.get(Customer, call.customer_id).phone == CALLER  # type: ignore[union-attr]
    assert queued(broker, "telephony") == [("call_control", ["answer", "v3:abc", str(call.id)])]

    # The same call announced again under a new event id: no second call, no second answer,
    # the event linked to the call; and the same caller's next call finds their customer.
    payload = call_payload("v3:abc", from_=CALLER, to=NUMBER)
    assert deliver(telnyx_client, signer, "call.initiated", payload).status_code == 200
    assert db.scalars(select(Call)).one().id == call.id
    assert len(queued(broker, "telephony")) == 1
    linked = db.scalars(select(CallEvent.call_id).where(CallEvent.event_type == "call.initiated"))
    assert set(linked) == {call.id}
    deliver(
        telnyx_client, signer, "call.initiated", call_payload("v3:def", from_=CALLER, to=NUMBER)
    )
    second = db.scalars(select(Call).where(Call.telnyx_call_control_id == "v3:def")).one()
    assert second.customer_id == call.customer_id


def test_unknown_number_is_hung_up_without_a_call_row(
    telnyx_client: FlaskClient,
    signer: TelnyxSigner,
    routed: Tenant,
    broker: RedisBroker,
    db: Session,
) -> None:
    deliver(
        telnyx_client,
        signer,
        "call.initiated",
        call_payload("v3:nobody", from_=CALLER, to="+14155550000"),
    )
    assert db.scalar(select(func.count()).select_from(Call)) == 0
    assert queued(broker, "telephony") == [("call_control", ["hangup", "v3:nobody", ""])]


def test_lifecycle_to_hangup_enqueues_post_call_work_once(
    telnyx_client: FlaskClient,
    signer: TelnyxSigner,
    routed: Tenant,
    broker: RedisBroker,
    db: Session,
) -> None:
    payload = call_payload("v3:life", from_=CALLER, to=NUMBER)
    deliver(telnyx_client, signer, "call.initiated", payload)
    deliver(telnyx_client, signer, "call.answered", payload)
    deliver(telnyx_client, signer, "streaming.started", {**payload, "stream_url": "ws://x"})
    hangup = {**payload, "hangup_cause": "normal_clearing", "hangup_source": "caller"}
    deliver(telnyx_client, signer, "call.hangup", hangup, event_id="hangup-1")
    deliver(telnyx_client, signer, "call.hangup", hangup, event_id="hangup-1")  # duplicate delivery
    deliver(telnyx_client, signer, "call.hangup", hangup)  # same hangup, new event id
    call = db.scalars(select(Call)).one()
    db.refresh(call)
    assert call.status == "completed" and call.hangup_cause == "normal_clearing"
    assert (
        call.answered_at is not None
        and call.ended_at is not None
        and call.duration_seconds is not None
    )
    assert queued(broker, "post_call") == [("analyze_call", [str(call.id)])]
    linked = db.execute(
        select(CallEvent.event_type, CallEvent.organization_id).where(CallEvent.call_id == call.id)
    ).all()
    assert sorted(event_type for event_type, _ in linked) == sorted(
        ["call.initiated", "call.answered", "streaming.started", "call.hangup", "call.hangup"]
    )
    assert {organization_id for _, organization_id in linked} == {call.organization_id}


def test_unanswered_hangup_causes_map_to_final_statuses(
    telnyx_client: FlaskClient, signer: TelnyxSigner, routed: Tenant, db: Session
) -> None:
    for ccid, cause, expected in [
        ("v3:b", "user_busy", "busy"),
        ("v3:n", "timeout", "no_answer"),
        ("v3:c", "originator_cancel", "canceled"),
        ("v3:f", "call_rejected", "failed"),
    ]:
        payload = call_payload(ccid, from_=CALLER, to=NUMBER)
        deliver(telnyx_client, signer, "call.initiated", payload)
        deliver(telnyx_client, signer, "call.hangup", {**payload, "hangup_cause": cause})
        assert db.scalar(select(Call.status).where(Call.telnyx_call_control_id == ccid)) == expected


def test_reordered_events_never_move_a_call_backwards(
    telnyx_client: FlaskClient, signer: TelnyxSigner, routed: Tenant, db: Session
) -> None:
    payload = call_payload("v3:late", from_=CALLER, to=NUMBER)
    deliver(telnyx_client, signer, "call.initiated", payload)
    deliver(telnyx_client, signer, "call.hangup", {**payload, "hangup_cause": "originator_cancel"})
    late = deliver(telnyx_client, signer, "call.answered", payload)
    assert late.status_code == 200
    call = db.scalars(select(Call)).one()
    assert call.status == "canceled" and call.answered_at is None


def test_unknown_event_types_are_stored_and_acknowledged(
    telnyx_client: FlaskClient, signer: TelnyxSigner, db: Session
) -> None:
    response = deliver(
        telnyx_client, signer, "call.cost", {"call_control_id": "v3:zzz", "total_cost": "0.01"}
    )
    assert response.status_code == 200
    assert db.scalar(select(CallEvent.event_type)) == "call.cost"


@pytest.mark.parametrize(
    "tamper",
    [
        "wrong_key",
        "body_changed",
        "stale",
        "future",
        "no_signature",
        "no_timestamp",
        "garbage_signature",
    ],
)
def test_unverified_deliveries_are_rejected_and_store_nothing(
    telnyx_client: FlaskClient, signer: TelnyxSigner, routed: Tenant, db: Session, tamper: str
) -> None:
    body = envelope("call.initiated", call_payload("v3:evil", from_=CALLER, to=NUMBER))
    headers = signer.headers(body)
    if tamper == "wrong_key":
        headers = TelnyxSigner().headers(body)
    elif tamper == "body_changed":
        body = body.replace(CALLER.encode(), b"+14155550666")
    elif tamper == "stale":
        headers = signer.headers(body, int(time.time()) - OUTSIDE_TOLERANCE_S)
    elif tamper == "future":  # (a second past the tolerance was not always outside it: the
        # timestamp is in whole seconds and the check runs a fraction of one later)
        headers = signer.headers(body, int(time.time()) + OUTSIDE_TOLERANCE_S)
    elif tamper == "no_signature":
        del headers["telnyx-signature-ed25519"]
    elif tamper == "no_timestamp":
        del headers["telnyx-timestamp"]
    else:
        headers["telnyx-signature-ed25519"] = "not base64!!"
    response = telnyx_client.post("/webhooks/telnyx", data=body, headers=headers)
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert db.scalar(select(func.count()).select_from(CallEvent)) == 0
    assert db.scalar(select(func.count()).select_from(Call)) == 0


def test_signed_garbage_is_400_and_huge_bodies_413(
    telnyx_client: FlaskClient, signer: TelnyxSigner, db: Session
) -> None:
    assert (
        telnyx_client.post(
            "/webhooks/telnyx", data=b"not json", headers=signer.headers(b"not json")
        ).status_code
        == 400
    )
    huge = b"{" + b" " * (1024 * 1024) + b"}"
    assert (
        telnyx_client.post("/webhooks/telnyx", data=huge, headers=signer.headers(huge)).status_code
        == 413
    )
    assert db.scalar(select(func.count()).select_from(CallEvent)) == 0


def test_missing_public_key_rejects_everything(client: FlaskClient, signer: TelnyxSigner) -> None:
    body = envelope("call.initiated", call_payload("v3:x", from_=CALLER, to=NUMBER))
    response = client.post("/webhooks/telnyx", data=body, headers=signer.headers(body))
    assert response.status_code == 503


def test_event_for_another_tenants_call_cannot_hijack_it(
    telnyx_client: FlaskClient, signer: TelnyxSigner, routed: Tenant, db: Session
) -> None:
    payload = call_payload("v3:mine", from_=CALLER, to=NUMBER)
    deliver(telnyx_client, signer, "call.initiated", payload)
    call = db.scalars(select(Call)).one()
    from shared.providers.telephony.telnyx_call_control import encode_client_state

    # A different leg claims to be our call through client_state: ignored.
    forged = call_payload(
        "v3:other-leg",
        from_=CALLER,
        to=NUMBER,
        direction="outgoing",
        client_state=encode_client_state(str(call.id)),
    )
    deliver(telnyx_client, signer, "call.hangup", {**forged, "hangup_cause": "normal_clearing"})
    db.refresh(call)
    assert call.status == "ringing" and call.telnyx_call_control_id == "v3:mine"


def test_an_outbound_call_is_matched_by_client_state_before_its_id_is_stored(
    telnyx_client: FlaskClient,
    signer: TelnyxSigner,
    routed: Tenant,
    broker: RedisBroker,
    db: Session,
) -> None:
    """The dial response (with the call_control_id) may be stored after Telnyx's first
    events: those find the call by our id in client_state and record its call_control_id."""
    from shared.providers.telephony.telnyx_call_control import encode_client_state

    call = Call(
        organization_id=uuid.UUID(routed.organization_id),
        direction="outbound",
        from_number=NUMBER,
        to_number=CALLER,
        status="dialing",
    )
    db.add(call)
    db.flush()
    leg = call_payload(
        "v3:out",
        from_=NUMBER,
        to=CALLER,
        direction="outgoing",
        client_state=encode_client_state(str(call.id)),
    )
    deliver(telnyx_client, signer, "call.answered", leg)
    db.refresh(call)
    assert (call.status, call.telnyx_call_control_id) == ("in_progress", "v3:out")
    assert call.answered_at is not None
    deliver(telnyx_client, signer, "call.hangup", {**leg, "hangup_cause": "normal_clearing"})
    db.refresh(call)
    assert (call.status, call.hangup_cause) == ("completed", "normal_clearing")
    assert call.duration_seconds is not None and call.duration_seconds >= 0
    assert queued(broker, "post_call") == [("analyze_call", [str(call.id)])]


def test_webhook_is_also_served_under_the_api_prefix(
    telnyx_client: FlaskClient, signer: TelnyxSigner
) -> None:
    body = envelope("call.cost", {"call_control_id": "v3:p"})
    assert (
        telnyx_client.post(
            "/api/v1/webhooks/telnyx", data=body, headers=signer.headers(body)
        ).status_code
        == 200
    )
