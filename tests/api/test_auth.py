"""Register, login, refresh rotation with theft detection, revocation, API keys."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, RefreshToken
from tests.conftest import Tenant


def _refresh(client: FlaskClient, token: str):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/auth/refresh", json={"refresh_token": token})


def test_login_returns_a_bearer_pair_that_opens_the_api(
    client: FlaskClient, tenant: Tenant
) -> None:
    login = client.post(
        "/api/v1/auth/login", json={"email": tenant.email, "password": tenant.password}
    )
    body = login.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 30 * 60
    assert client.get("/api/v1/agents", headers=tenant.headers).status_code == 200


def test_registering_the_same_email_twice_conflicts(client: FlaskClient, tenant: Tenant) -> None:
    again = client.post(
        "/api/v1/auth/register",
        json={
            "organization": "Other",
            "email": tenant.email.upper(),
            "password": "another password",
        },
    )
    assert again.status_code == 409
    assert again.content_type == "application/problem+json"


def test_wrong_password_and_unknown_email_get_the_same_401(
    client: FlaskClient, tenant: Tenant
) -> None:
    wrong = client.post("/api/v1/auth/login", json={"email": tenant.email, "password": "nope nope"})
    unknown = client.post(
        "/api/v1/auth/login", json={"email": "x@nowhere.example.com", "password": "nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json()["detail"] == unknown.get_json()["detail"]


def test_refresh_rotates_and_the_old_token_is_spent(client: FlaskClient, tenant: Tenant) -> None:
    first = _refresh(client, tenant.refresh_token)
    assert first.status_code == 200
    new_pair = first.get_json()
    assert new_pair["refresh_token"] != tenant.refresh_token
    assert (
        client.get(
            "/api/v1/agents", headers={"Authorization": f"Bearer {new_pair['access_token']}"}
        ).status_code
        == 200
    )
    assert _refresh(client, new_pair["refresh_token"]).status_code == 200


def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    successor = _refresh(client, tenant.refresh_token).get_json()["refresh_token"]
    replay = _refresh(client, tenant.refresh_token)
    assert replay.status_code == 401
    # The thief's replay also kills the legitimate successor.
    assert _refresh(client, successor).status_code == 401
    family = db.scalars(select(RefreshToken)).all()
    assert family and all(row.revoked_at is not None for row in family)


def test_revoke_ends_the_session_of_that_refresh_token(client: FlaskClient, tenant: Tenant) -> None:
    assert (
        client.post("/api/v1/auth/revoke", json={"refresh_token": tenant.refresh_token}).status_code
        == 204
    )
    assert _refresh(client, tenant.refresh_token).status_code == 401


def test_revoke_all_kills_refresh_and_access_tokens(client: FlaskClient, tenant: Tenant) -> None:
    other_login = client.post(
        "/api/v1/auth/login", json={"email": tenant.email, "password": tenant.password}
    ).get_json()
    assert client.post("/api/v1/auth/revoke-all", headers=tenant.headers).status_code == 204
    assert client.get("/api/v1/agents", headers=tenant.headers).status_code == 401
    assert _refresh(client, tenant.refresh_token).status_code == 401
    assert _refresh(client, other_login["refresh_token"]).status_code == 401


def test_tampered_expired_and_missing_tokens_are_401(client: FlaskClient, tenant: Tenant) -> None:
    header, payload, signature = tenant.access_token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    with client.application.app_context():
        expired = create_access_token(
            identity=tenant.user_id,
            expires_delta=timedelta(seconds=-10),
            additional_claims={"tv": 0},
        )
        forged = create_access_token(identity=tenant.user_id, additional_claims={"tv": 0})
    assert (
        client.get("/api/v1/agents", headers={"Authorization": f"Bearer {tampered}"}).status_code
        == 401
    )
    assert (
        client.get("/api/v1/agents", headers={"Authorization": f"Bearer {expired}"}).status_code
        == 401
    )
    assert client.get("/api/v1/agents").status_code == 401
    assert client.get("/api/v1/agents", headers={"Authorization": "Basic abc"}).status_code == 401
    # Same secret, right claims: proves the 401s above come from the token, not the route.
    assert (
        client.get("/api/v1/agents", headers={"Authorization": f"Bearer {forged}"}).status_code
        == 200
    )


def test_refresh_token_garbage_is_401(client: FlaskClient) -> None:
    for junk in ["abc", "rt_zz_zz", "rt_" + "0" * 32 + "_secret"]:
        assert _refresh(client, junk).status_code == 401


def test_api_key_is_shown_once_stored_hashed_and_works_as_bearer(
    client: FlaskClient, tenant: Tenant, db: Session
) -> None:
    created = client.post("/api/v1/api-keys", json={"name": "ci"}, headers=tenant.headers)
    assert created.status_code == 201
    key = created.get_json()["key"]
    listed = client.get("/api/v1/api-keys", headers=tenant.headers).get_json()["data"]
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]
    stored = db.scalars(select(ApiKey)).one()
    secret = key.split("_", 2)[2]  # sbk_<id>_<secret>; the secret may itself contain "_"
    assert stored.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in stored.secret_hash
    key_headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/agents", headers=key_headers).status_code == 200
    db.refresh(stored)
    assert stored.last_used_at is not None
    assert (
        client.get("/api/v1/agents", headers={"Authorization": f"Bearer {key[:-2]}xx"}).status_code
        == 401
    )
    assert (
        client.delete(
            f"/api/v1/api-keys/{created.get_json()['id']}", headers=tenant.headers
        ).status_code
        == 204
    )
    assert client.get("/api/v1/agents", headers=key_headers).status_code == 401


def test_api_key_cannot_revoke_all(client: FlaskClient, tenant: Tenant) -> None:
    key = client.post("/api/v1/api-keys", json={"name": "ci"}, headers=tenant.headers).get_json()[
        "key"
    ]
    assert (
        client.post(
            "/api/v1/auth/revoke-all", headers={"Authorization": f"Bearer {key}"}
        ).status_code
        == 401
    )
