"""The API through the real `web` process (gunicorn, two gevent workers): credentials are
cached per worker, and a revocation made elsewhere reaches every worker at once."""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from scripts import processes
from tests.conftest import register_tenant
from tests.e2e.conftest import start_gunicorn, wait_for

# With the cache's 60 s expiry, a revocation that did not reach a worker would still
# authenticate after this long: seeing 401 sooner shows the notification did it.
REVOCATION_SEEN_WITHIN_S = 3.0


@pytest.fixture(scope="module")
def web_port(
    provider_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    server, port, _ = start_gunicorn(
        "web", {**provider_env, "WEB_WORKERS": "2"}, tmp_path_factory.mktemp("web")
    )
    yield port
    processes.stop(server, "web")


def _status(port: int, path: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def _cache_hits(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in body.splitlines()
        if line.startswith('auth_cache_lookups_total{result="hit"}')
    )


def _warm(port: int, token: str) -> None:
    """Requests over a second, so both workers have listeners up and the credential cached."""
    for _ in range(30):
        assert _status(port, "/api/v1/calls", token) == 200
        time.sleep(0.03)


def _revoked_everywhere(port: int, token: str) -> None:
    wait_for(
        lambda: _status(port, "/api/v1/calls", token) == 401,
        REVOCATION_SEEN_WITHIN_S,
        "the revocation to reach the web workers",
    )
    assert {_status(port, "/api/v1/calls", token) for _ in range(20)} == {401}


def test_a_deleted_api_key_stops_working_in_every_worker_at_once(
    web: FlaskClient, web_port: int
) -> None:
    owner = register_tenant(web, f"Keys{uuid.uuid4().hex[:6]}")
    created = web.post("/api/v1/api-keys", json={"name": "ci"}, headers=owner.headers).get_json()
    hits_before = _cache_hits(web_port)
    _warm(web_port, created["key"])
    assert _cache_hits(web_port) > hits_before + 20  # served from the cache, not the table

    deleted = web.delete(f"/api/v1/api-keys/{created['id']}", headers=owner.headers)
    assert deleted.status_code == 204
    _revoked_everywhere(web_port, created["key"])


def test_revoke_all_stops_cached_access_tokens_in_every_worker(
    web: FlaskClient, web_port: int, tmp_path: Path
) -> None:
    owner = register_tenant(web, f"Tokens{uuid.uuid4().hex[:6]}")
    _warm(web_port, owner.access_token)

    assert web.post("/api/v1/auth/revoke-all", headers=owner.headers).status_code == 204
    _revoked_everywhere(web_port, owner.access_token)
