"""Fixtures on the real PostgreSQL and Redis that scripts/test started (or DATABASE_URL /
REDIS_URL name). Each test runs inside a transaction that is rolled back at its end."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from scripts import build_native
from shared.config import Settings, load_settings
from shared.db.engine import make_engine
from shared.db.migrate import upgrade
from shared.db.models import Call, Organization
from shared.services import auth_cache
from web.api.app import create_app


def pytest_sessionstart(session: pytest.Session) -> None:
    # Python imports a compiled module before its source: an old build would be tested.
    if build_native.stale():
        pytest.exit(
            "the compiled frame path is older than its sources: run "
            "`python -m scripts.build_native` (scripts/test does), or --clean it",
            2,
        )


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = load_settings()
    if not base.database_url or not base.redis_url:
        pytest.exit("DATABASE_URL and REDIS_URL must be set: run the tests with scripts/test", 2)
    return load_settings(
        data_dir=tmp_path_factory.mktemp("data"), secret_key="test-secret-key-" + "x" * 32
    )


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    upgrade(settings.require_database_url())
    engine = make_engine(settings.require_database_url(), pool_size=5)
    yield engine
    engine.dispose()


@contextmanager
def scratch_database(settings: Settings, prefix: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    url = make_url(settings.require_database_url())
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        auth_cache.close_for(url.set(database=name).render_as_string(hide_password=False))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(settings: Settings) -> Iterator[str]:
    with scratch_database(settings, "migrations") as url:
        yield url


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.require_redis_url())


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions joined to one outer transaction: commits become savepoints, all rolled back."""
    connection = engine.connect()
    outer = connection.begin()
    yield sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    outer.rollback()
    connection.close()


@pytest.fixture
def db(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def client(
    settings: Settings, session_factory: sessionmaker[Session], redis_client: redis.Redis
) -> FlaskClient:
    app = create_app(settings, session_factory=session_factory, redis_client=redis_client)
    return app.test_client()


@dataclass
class Tenant:
    organization_id: str
    user_id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def register_tenant(client: FlaskClient, name: str = "Acme") -> Tenant:
    email = f"{uuid.uuid4().hex[:10]}@{name.lower()}.example.com"
    password = "correct horse battery"
    reg = client.post(
        "/api/v1/auth/register", json={"organization": name, "email": email, "password": password}
    )
    assert reg.status_code == 201, reg.get_json()
    login = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.get_json()
    body: dict[str, Any] = login.get_json()
    return Tenant(
        organization_id=reg.get_json()["organization_id"],
        user_id=reg.get_json()["user_id"],
        email=email,
        password=password,
        access_token=body["access_token"],
        refresh_token=body["refresh_token"],
    )


@pytest.fixture
def tenant(client: FlaskClient) -> Tenant:
    return register_tenant(client, "Acme")


@pytest.fixture
def other_tenant(client: FlaskClient) -> Tenant:
    return register_tenant(client, "Globex")


def add_org(db: Session, name: str = "Acme", **fields: Any) -> Organization:
    """A tenant row, flushed (it has its id); the test's transaction decides the rest."""
    org = Organization(name=name, **fields)
    db.add(org)
    db.flush()
    return org


def add_call(db: Session, organization_id: uuid.UUID, **fields: Any) -> Call:
    """A call row of the tenant (inbound, between two test numbers, unless `fields` say
    otherwise), committed: in the test's transaction that is a savepoint."""
    call = Call(
        organization_id=organization_id,
        **{
            "direction": "inbound",
            "from_number": "+14155550123",
            "to_number": "+14155550100",
            "status": "in_progress",
            **fields,
        },
    )
    db.add(call)
    db.commit()
    return call


ROOT = Path(__file__).resolve().parents[1]


def run_fresh(script: str, *args: str, timeout: float = 60) -> str:
    """`script` in a fresh interpreter of this Python, run from the project root: its own
    gevent patching, cold caches, as a worker starts. `args` are its sys.argv[1:]. Fails
    the test with the script's stderr if it fails; returns its stdout."""
    done = subprocess.run(  # noqa: S603  # this interpreter, the tests' own script
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@contextmanager
def no_automatic_collections() -> Iterator[None]:
    """As in the voice worker during calls (web/voice/gc_policy.py): only reference
    counting frees anything, so what ends in a reference cycle stays."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive(cls: type) -> int:
    """How many objects of exactly `cls` exist. Not a weak reference: the voice frame
    path's classes are compiled (shared/native.py), and mypyc's support none."""
    return sum(type(o) is cls for o in gc.get_objects())


def poll_until(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    """True once `condition()` holds, polled every 10 ms; False after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
