"""Another tenant's resources answer 404 on every verb and never appear in lists."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.api.test_resources import create_agent, seed_call
from tests.conftest import Tenant


def _owned_by(client: FlaskClient, db: Session, owner: Tenant) -> dict[str, str]:
    agent = create_agent(client, owner)
    number = client.post(
        "/api/v1/phone-numbers",
        json={"number": "+14155550177", "agent_id": agent["id"]},
        headers=owner.headers,
    ).get_json()
    customer = client.post(
        "/api/v1/customers", json={"phone": "+14155550178"}, headers=owner.headers
    ).get_json()
    key = client.post("/api/v1/api-keys", json={"name": "k"}, headers=owner.headers).get_json()
    call = seed_call(db, owner, status="in_progress")
    return {
        "agents": agent["id"],
        "phone-numbers": number["id"],
        "customers": customer["id"],
        "api-keys": key["id"],
        "calls": str(call.id),
    }


@pytest.mark.parametrize(
    ("collection", "verbs"),
    [
        ("agents", ["get", "patch", "delete"]),
        ("customers", ["get", "patch", "delete"]),
        ("calls", ["get", "patch"]),
        ("phone-numbers", ["delete"]),
        ("api-keys", ["delete"]),
    ],
)
def test_foreign_resources_are_404_and_unlisted(
    client: FlaskClient,
    db: Session,
    tenant: Tenant,
    other_tenant: Tenant,
    collection: str,
    verbs: list[str],
) -> None:
    ids = _owned_by(client, db, tenant)
    url = f"/api/v1/{collection}/{ids[collection]}"
    patch_body = {"calls": {"notes": "x"}, "agents": {"name": "x"}, "customers": {"name": "x"}}.get(
        collection, {}
    )
    for verb in verbs:
        kwargs = {"json": patch_body} if verb == "patch" else {}
        response = getattr(client, verb)(url, headers=other_tenant.headers, **kwargs)
        assert response.status_code == 404, (verb, url, response.get_json())
    listed = client.get(f"/api/v1/{collection}", headers=other_tenant.headers).get_json()["data"]
    assert listed == []
    # Still there, unchanged, for its owner.
    if "get" in verbs:
        assert client.get(url, headers=tenant.headers).status_code == 200
    owner_list = client.get(f"/api/v1/{collection}", headers=tenant.headers).get_json()["data"]
    assert ids[collection] in [row["id"] for row in owner_list]


def test_another_tenants_customer_context_is_404(
    client: FlaskClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    customer = client.post(
        "/api/v1/customers", json={"phone": "+14155550143"}, headers=tenant.headers
    ).get_json()
    assert (
        client.get(
            f"/api/v1/customers/{customer['id']}/context", headers=other_tenant.headers
        ).status_code
        == 404
    )
