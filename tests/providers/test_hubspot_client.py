"""The HubSpot client: the real SDK against a local fake HubSpot, through the guard."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hubspot.crm.contacts import ApiException

from scripts.fakes.http_fake import Reply
from scripts.fakes.hubspot_api import CALLS, CONTACTS, FakeHubSpot, start_fake_hubspot
from shared.providers.crm.hubspot import (
    CallEngagement,
    HubSpotClient,
    engagement_marker,
    engagement_title,
)
from shared.resilience import Guard, Policy, classify, guard

TOKEN = "pat-na1-test"
PHONE = "+14155550123"


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    server = start_fake_hubspot(TOKEN)
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeHubSpot) -> HubSpotClient:
    return HubSpotClient(TOKEN, fake.url)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The production guard's waits, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(guard("hubspot"), "sleep", recorded.append)
    return recorded


def engagement(contact_id: str, **changes: object) -> CallEngagement:
    fields: dict[str, object] = {
        "marker": engagement_marker("0b7c7a4e-4c1e-4d5e-9a51-2f0c9e8f1a11"),
        "contact_id": contact_id,
        "occurred_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "direction": "inbound",
        "status": "completed",
        "summary": "caller: my <order> is late | agent: it ships today",
        "outcome": "resolved",
        "duration_seconds": 65.25,
        "from_number": PHONE,
        "to_number": "+14155550100",
        "recording_url": "https://media.example.com/rec/1.mp3",
    }
    fields.update(changes)
    return CallEngagement(**fields)  # type: ignore[arg-type]


def test_a_contact_found_by_phone_is_reused_and_the_oldest_of_duplicates_wins(
    fake: FakeHubSpot, client: HubSpotClient
) -> None:
    first = fake.add_contact(phone=PHONE, firstname="Ada")
    fake.add_contact(phone=PHONE, firstname="Ada (duplicate)")
    fake.add_contact(phone="+14155550999")

    assert client.find_contact_by_phone(PHONE) == first
    search = fake.received(CONTACTS + "/search")[0].json()
    assert search["filterGroups"] == [
        {"filters": [{"propertyName": "phone", "operator": "EQ", "value": PHONE}]}
    ]
    assert fake.received(CONTACTS) == []
    assert fake.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_a_missing_contact_is_not_found_and_then_created_with_name_and_email(
    fake: FakeHubSpot, client: HubSpotClient
) -> None:
    assert client.find_contact_by_phone(PHONE) is None
    contact_id = client.create_contact(PHONE, "Ada King Lovelace", "ada@example.com")
    assert (
        fake.contacts[contact_id].properties.items()
        >= {
            "phone": PHONE,
            "firstname": "Ada",
            "lastname": "King Lovelace",
            "email": "ada@example.com",
        }.items()
    )
    assert client.find_contact_by_phone(PHONE) == contact_id


def test_an_email_hubspot_already_has_links_to_that_contact_instead_of_failing(
    fake: FakeHubSpot, client: HubSpotClient
) -> None:
    existing = fake.add_contact(email="ada@example.com", phone="+14155550777")
    assert client.create_contact(PHONE, "Ada", "ADA@example.com") == existing
    assert len(fake.contacts) == 1


def test_an_engagement_is_created_with_the_call_properties_and_the_194_association(
    fake: FakeHubSpot, client: HubSpotClient
) -> None:
    contact_id = fake.add_contact(phone=PHONE)
    call = engagement(contact_id)

    engagement_id = client.create_call_engagement(call)

    sent = fake.received(CALLS)[0].json()
    assert sent["properties"] == {
        "hs_timestamp": "2025-01-02T03:04:05.000Z",
        "hs_call_title": engagement_title(call.marker),
        "hs_call_body": "<p><strong>Outcome:</strong> resolved</p>"
        "<p>caller: my &lt;order&gt; is late | agent: it ships today</p>",
        "hs_call_duration": "65250",
        "hs_call_direction": "INBOUND",
        "hs_call_status": "COMPLETED",
        "hs_call_from_number": PHONE,
        "hs_call_to_number": "+14155550100",
        "hs_call_recording_url": "https://media.example.com/rec/1.mp3",
    }
    assert sent["associations"] == [
        {
            "to": {"id": contact_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}],
        }
    ]
    assert fake.engagements[engagement_id].associations == sent["associations"]


def test_an_outbound_unanswered_call_maps_its_direction_and_status_and_drops_an_http_recording(
    fake: FakeHubSpot, client: HubSpotClient
) -> None:
    contact_id = fake.add_contact(phone=PHONE)
    call = engagement(
        contact_id,
        direction="outbound",
        status="no_answer",
        duration_seconds=None,
        recording_url="http://media.example.com/rec/1.mp3",
    )
    properties = fake.engagements[client.create_call_engagement(call)].properties
    assert (properties["hs_call_direction"], properties["hs_call_status"]) == (
        "OUTBOUND",
        "NO_ANSWER",
    )
    assert "hs_call_recording_url" not in properties
    assert "hs_call_duration" not in properties


def test_an_existing_engagement_with_our_marker_is_found_by_an_exact_title_search(
    fake: FakeHubSpot, client: HubSpotClient
) -> None:
    contact_id = fake.add_contact(phone=PHONE)
    marker = engagement_marker("0b7c7a4e-4c1e-4d5e-9a51-2f0c9e8f1a11")
    fake.add_engagement(contact_id, hs_call_title=engagement_title(marker + "0"))
    existing = fake.add_engagement(contact_id, hs_call_title=engagement_title(marker))

    assert client.find_call_engagement(marker) == existing
    assert client.find_call_engagement(engagement_marker("another-call")) is None
    search = fake.received(CALLS + "/search")[0].json()
    assert search["filterGroups"][0]["filters"] == [
        {"propertyName": "hs_call_title", "operator": "EQ", "value": engagement_title(marker)}
    ]
    assert fake.received(CALLS) == []


def test_a_create_that_timed_out_after_hubspot_stored_it_is_found_not_repeated(
    fake: FakeHubSpot,
) -> None:
    quick = Guard("hubspot-test", Policy(timeout=0.5, backoff=0.0))
    client = HubSpotClient(TOKEN, fake.url, guard=quick)
    contact_id = fake.add_contact(phone=PHONE)
    fake.delay(CALLS, 1.5)  # stored at once, answered after the client gave up

    engagement_id = client.create_call_engagement(engagement(contact_id))

    assert list(fake.engagements) == [engagement_id]
    assert len(fake.received(CALLS)) == 1
    assert len(fake.received(CALLS + "/search")) == 1


def test_a_429_with_retry_after_is_retried_after_that_wait_and_succeeds(
    fake: FakeHubSpot, client: HubSpotClient, waits: list[float]
) -> None:
    contact_id = fake.add_contact(phone=PHONE)
    fake.rate_limit(times=2, retry_after="2")

    assert client.find_contact_by_phone(PHONE) == contact_id
    assert waits == [2.0, 2.0]
    assert len(fake.received(CONTACTS + "/search")) == 3


def test_the_sdk_error_for_a_429_carries_status_and_headers_so_it_is_transient(
    fake: FakeHubSpot,
) -> None:
    once = Guard("hubspot-once", Policy(attempts=1))
    fake.rate_limit(times=1, retry_after="7")
    with pytest.raises(Exception) as raised:
        HubSpotClient(TOKEN, fake.url, guard=once).find_contact_by_phone(PHONE)
    cause = raised.value.__cause__
    assert isinstance(cause, ApiException)
    assert cause.status == 429
    failure = classify(cause)
    assert (failure.transient, failure.status, failure.retry_after) == (True, 429, 7.0)


def test_a_400_is_not_retried(fake: FakeHubSpot, client: HubSpotClient, waits: list[float]) -> None:
    fake.fail_next(
        Reply(400, {"status": "error", "message": "bad filter", "category": "VALIDATION_ERROR"})
    )
    with pytest.raises(ApiException) as raised:
        client.find_contact_by_phone(PHONE)
    assert raised.value.status == 400
    assert len(fake.requests) == 1
    assert waits == []


def test_a_wrong_token_is_refused_once_and_not_retried(
    fake: FakeHubSpot, waits: list[float]
) -> None:
    with pytest.raises(ApiException) as raised:
        HubSpotClient("pat-wrong", fake.url).find_contact_by_phone(PHONE)
    assert raised.value.status == 401
    assert len(fake.requests) == 1
