"""Agents, phone numbers, customers and calls through the REST API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from shared.db.models import Call, CallTurn
from tests.conftest import Tenant
from web.api.schemas.calls import CallDetail, CallOut

AGENT = {
    "name": "Front desk",
    "persona": "You are a friendly receptionist.",
    "greeting": "Hello, thanks for calling Acme!",
    "closing": "Goodbye!",
    "voice": "joe",
    "language": "en",
    "knowledge": [{"question": "When are you open?", "answer": "Nine to five, Monday to Friday."}],
}


def create_agent(client: FlaskClient, tenant: Tenant, **overrides: object) -> dict:
    response = client.post("/api/v1/agents", json={**AGENT, **overrides}, headers=tenant.headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def routed_agent(client: FlaskClient, tenant: Tenant, number: str, **overrides: object) -> dict:
    """A new agent of `tenant` with `number` routed to it."""
    agent = create_agent(client, tenant, **overrides)
    routed = client.post(
        "/api/v1/phone-numbers",
        json={"number": number, "agent_id": agent["id"]},
        headers=tenant.headers,
    )
    assert routed.status_code == 201, routed.get_json()
    return agent


def seed_call(
    db: Session,
    tenant: Tenant,
    *,
    status: str = "completed",
    agent_id: str | None = None,
    at: datetime | None = None,
) -> Call:
    call = Call(
        organization_id=uuid.UUID(tenant.organization_id),
        agent_id=uuid.UUID(agent_id) if agent_id else None,
        direction="inbound",
        from_number="+14155550100",
        to_number="+14155550199",
        status=status,
        created_at=at or datetime.now(UTC),
    )
    db.add(call)
    db.flush()
    return call


def test_agent_lifecycle_with_knowledge(client: FlaskClient, tenant: Tenant) -> None:
    agent = create_agent(client, tenant)
    assert agent["knowledge"] == AGENT["knowledge"]
    patched = client.patch(
        f"/api/v1/agents/{agent['id']}",
        json={
            "greeting": "Hi!",
            "knowledge": [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2"}],
        },
        headers=tenant.headers,
    ).get_json()
    assert patched["greeting"] == "Hi!" and patched["persona"] == AGENT["persona"]
    assert [k["question"] for k in patched["knowledge"]] == ["Q1", "Q2"]
    untouched = client.patch(
        f"/api/v1/agents/{agent['id']}", json={"name": "Desk"}, headers=tenant.headers
    ).get_json()
    assert len(untouched["knowledge"]) == 2
    assert client.delete(f"/api/v1/agents/{agent['id']}", headers=tenant.headers).status_code == 204
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=tenant.headers).status_code == 404


def test_list_pages_with_a_cursor_newest_first(client: FlaskClient, tenant: Tenant) -> None:
    names = [f"agent-{i}" for i in range(5)]
    for name in names:
        create_agent(client, tenant, name=name)
    seen, cursor = [], None
    while True:
        url = "/api/v1/agents?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=tenant.headers).get_json()
        seen += [a["name"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(names) and len(seen) == 5


def test_phone_number_routes_to_own_agent_and_is_unique(
    client: FlaskClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    agent = create_agent(client, tenant)
    created = client.post(
        "/api/v1/phone-numbers",
        json={"number": "+14155550123", "agent_id": agent["id"]},
        headers=tenant.headers,
    )
    assert created.status_code == 201
    foreign_agent = create_agent(client, other_tenant)
    taken = client.post(
        "/api/v1/phone-numbers",
        json={"number": "+14155550123", "agent_id": foreign_agent["id"]},
        headers=other_tenant.headers,
    )
    assert taken.status_code == 409
    stolen_agent = client.post(
        "/api/v1/phone-numbers",
        json={"number": "+14155550124", "agent_id": agent["id"]},
        headers=other_tenant.headers,
    )
    assert stolen_agent.status_code == 404
    bad = client.post(
        "/api/v1/phone-numbers",
        json={"number": "555-0123", "agent_id": agent["id"]},
        headers=tenant.headers,
    )
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "number"


def test_customer_phone_is_unique_per_tenant_only(
    client: FlaskClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    body = {
        "phone": "+442071838750",
        "name": "Ada",
        "email": "ada@example.com",
        "metadata": {"tier": "gold"},
    }
    first = client.post("/api/v1/customers", json=body, headers=tenant.headers)
    assert first.status_code == 201 and first.get_json()["metadata"] == {"tier": "gold"}
    assert client.post("/api/v1/customers", json=body, headers=tenant.headers).status_code == 409
    assert (
        client.post("/api/v1/customers", json=body, headers=other_tenant.headers).status_code == 201
    )
    found = client.get(
        "/api/v1/customers?phone=%2B442071838750", headers=tenant.headers
    ).get_json()["data"]
    assert [c["id"] for c in found] == [first.get_json()["id"]]
    patched = client.patch(
        f"/api/v1/customers/{first.get_json()['id']}",
        json={"name": "Ada L."},
        headers=tenant.headers,
    )
    assert patched.get_json()["name"] == "Ada L." and patched.get_json()["metadata"] == {
        "tier": "gold"
    }


def test_call_record_has_turns_with_latency_figures(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    call = seed_call(db, tenant)
    now = datetime.now(UTC)
    db.add_all(
        [
            CallTurn(
                call_id=call.id,
                seq=0,
                speaker="agent",
                text="Hello!",
                started_at=now,
                tts_ttfa_ms=120.0,
            ),
            CallTurn(
                call_id=call.id,
                seq=1,
                speaker="caller",
                text="Hi",
                started_at=now,
                interrupted=True,
                sentiment=0.4,
                stt_ms=90.5,
            ),
        ]
    )
    db.flush()
    body = client.get(f"/api/v1/calls/{call.id}", headers=tenant.headers).get_json()
    assert [t["speaker"] for t in body["turns"]] == ["agent", "caller"]
    assert body["turns"][1]["interrupted"] is True and body["turns"][1]["stt_ms"] == 90.5
    assert body["turns"][0]["tts_ttfa_ms"] == 120.0


def test_call_reads_are_exactly_what_their_schemas_declare(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    """The call reads return database rows without re-validating them: their keys, types
    and formats (UUIDs, UTC "Z" datetimes) must still be the documented ones."""
    call = seed_call(db, tenant)
    call.answered_at = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    call.duration_seconds = 61.5
    db.add(
        CallTurn(call_id=call.id, seq=0, speaker="agent", text="Hi", started_at=call.answered_at)
    )
    seed_call(db, tenant)  # no turns
    db.flush()
    detail = client.get(f"/api/v1/calls/{call.id}", headers=tenant.headers).get_json()
    assert detail == CallDetail.model_validate(detail).model_dump(mode="json")
    assert detail["answered_at"] == "2026-01-02T03:04:05.600000Z"
    listed = client.get("/api/v1/calls", headers=tenant.headers).get_json()["data"]
    assert len(listed) == 2
    for item in listed:
        assert item == CallOut.model_validate(item).model_dump(mode="json")
        empty = client.get(f"/api/v1/calls/{item['id']}", headers=tenant.headers).get_json()
        assert empty["turns"] == ([] if item["id"] != str(call.id) else detail["turns"])


def test_calls_page_newest_first_through_cursors_with_filters_kept(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    made = [
        seed_call(
            db, tenant, status="completed" if i % 3 else "failed", at=start + timedelta(minutes=i)
        )
        for i in range(7)
    ]
    completed = [str(c.id) for c in reversed(made) if c.status == "completed"]

    def walk(query: str) -> list[str]:
        seen, cursor = [], None
        for _ in range(10):
            url = f"/api/v1/calls?limit=2&{query}" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(url, headers=tenant.headers).get_json()
            assert len(page["data"]) <= 2
            seen += [c["id"] for c in page["data"]]
            if not (cursor := page["next_cursor"]):
                return seen
        raise AssertionError("pagination did not end")

    assert walk("status=completed") == completed
    assert walk("") == [str(c.id) for c in reversed(made)]
    garbage = client.get("/api/v1/calls?cursor=bm90LWEtY3Vyc29y", headers=tenant.headers)
    assert garbage.status_code == 422


def test_call_filters(client: FlaskClient, tenant: Tenant, db: Session) -> None:
    agent = create_agent(client, tenant)
    old = seed_call(db, tenant, status="completed", at=datetime.now(UTC) - timedelta(days=3))
    mine = seed_call(db, tenant, status="failed", agent_id=agent["id"])

    def ids(query: str) -> list[str]:
        return [
            c["id"]
            for c in client.get(f"/api/v1/calls?{query}", headers=tenant.headers).get_json()["data"]
        ]

    assert ids("status=failed") == [str(mine.id)]
    assert ids(f"agent_id={agent['id']}") == [str(mine.id)]
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"since={since}") == [str(mine.id)]
    assert ids(f"until={since}") == [str(old.id)]
    assert client.get("/api/v1/calls?status=exploded", headers=tenant.headers).status_code == 422


def test_call_patch_enforces_the_status_machine(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    call = seed_call(db, tenant, status="in_progress")
    ok = client.patch(
        f"/api/v1/calls/{call.id}",
        json={"status": "completed", "outcome": "booked", "notes": "n"},
        headers=tenant.headers,
    )
    assert ok.status_code == 200 and ok.get_json()["outcome"] == "booked"
    illegal = client.patch(
        f"/api/v1/calls/{call.id}",
        json={"status": "ringing", "notes": "changed"},
        headers=tenant.headers,
    )
    assert illegal.status_code == 409
    assert client.get(f"/api/v1/calls/{call.id}", headers=tenant.headers).get_json()["notes"] == "n"


def test_customer_context_ranks_memories_by_meaning(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    from shared.db.models import Memory
    from shared.providers.embeddings.local import LocalEmbeddings

    customer = client.post(
        "/api/v1/customers", json={"phone": "+14155550142", "name": "Ada"}, headers=tenant.headers
    ).get_json()
    call = seed_call(db, tenant)
    call.customer_id = uuid.UUID(customer["id"])
    call.outcome = "booked"
    embeddings = LocalEmbeddings()
    notes = [
        "Ada asked to move her cleaning appointment to Friday.",
        "Ada's dog is called Biscuit and she loves hiking.",
    ]
    for note, vector in zip(notes, embeddings.embed(notes), strict=True):
        db.add(
            Memory(
                organization_id=uuid.UUID(tenant.organization_id),
                customer_id=call.customer_id,
                call_id=None,
                kind="note",
                content=note,
                embedding=vector,
            )
        )
    db.flush()
    body = client.get(
        f"/api/v1/customers/{customer['id']}/context?query=reschedule my dental visit",
        headers=tenant.headers,
    ).get_json()
    assert body["customer_profile"]["name"] == "Ada"
    assert [c["id"] for c in body["recent_calls"]] == [str(call.id)]
    ranked = body["relevant_memories"]
    assert ranked[0]["content"] == notes[0] and ranked[0]["similarity"] > ranked[1]["similarity"]
    assert "booked" in body["suggested_approach"]
    recent = client.get(
        f"/api/v1/customers/{customer['id']}/context", headers=tenant.headers
    ).get_json()
    assert {m["content"] for m in recent["relevant_memories"]} == set(notes) and recent[
        "relevant_memories"
    ][0]["similarity"] is None
