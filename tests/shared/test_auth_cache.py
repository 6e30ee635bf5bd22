"""The credential cache against real PostgreSQL notifications: what it keeps, and when
it must stop trusting what it keeps."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import make_url

from shared.config import Settings
from shared.services.auth_cache import APPLICATION_NAME, CHANNEL, AuthCache


def _dsn(settings: Settings) -> str:
    url = make_url(settings.require_database_url()).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _wait(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Loader:
    def __init__(self, value: object = "org-1") -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> object:
        self.calls += 1
        return self.value


@pytest.fixture
def cache(settings: Settings) -> Iterator[AuthCache]:
    cache = AuthCache(settings.require_database_url())
    cache.get_or_load("key", uuid.uuid4(), Loader())  # starts the listener
    _wait(lambda: cache.listening)
    yield cache
    cache.close()


def test_a_listening_cache_loads_once_and_a_committed_notification_drops_the_entry(
    cache: AuthCache, settings: Settings
) -> None:
    key, load = uuid.uuid4(), Loader()
    for _ in range(3):
        assert cache.get_or_load("key", key, load) == "org-1"
    assert load.calls == 1
    with psycopg.connect(_dsn(settings), autocommit=True) as other_process:
        other_process.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"key:{key}"))
    _wait(lambda: (cache.get_or_load("key", key, load), load.calls)[1] == 2)
    cache.get_or_load("key", key, load)
    assert load.calls == 2  # cached again after the reload


def test_a_notification_inside_a_rolled_back_transaction_drops_nothing(
    cache: AuthCache, settings: Settings
) -> None:
    key, load = uuid.uuid4(), Loader()
    cache.get_or_load("key", key, load)
    with psycopg.connect(_dsn(settings)) as other_process:
        other_process.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"key:{key}"))
        other_process.rollback()
        other_process.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"user:{uuid.uuid4()}"))
        other_process.commit()
    time.sleep(0.3)
    cache.get_or_load("key", key, load)
    assert load.calls == 1


def test_an_invalidation_during_a_load_keeps_the_loaded_row_out_of_the_cache(
    cache: AuthCache,
) -> None:
    key = uuid.uuid4()

    def racing_load() -> str:
        cache.invalidate("key", key)  # a revocation lands while the row is being read
        return "stale"

    assert cache.get_or_load("key", key, racing_load) == "stale"
    fresh = Loader("fresh")
    assert cache.get_or_load("key", key, fresh) == "fresh"
    assert fresh.calls == 1


def test_entries_expire_and_missing_rows_are_never_cached(settings: Settings) -> None:
    cache = AuthCache(settings.require_database_url(), ttl_s=0.2)
    cache.get_or_load("key", uuid.uuid4(), Loader())
    _wait(lambda: cache.listening)
    key, load, missing = uuid.uuid4(), Loader(), Loader(None)
    cache.get_or_load("key", key, load)
    cache.get_or_load("key", key, load)
    time.sleep(0.25)
    cache.get_or_load("key", key, load)
    assert load.calls == 2
    unknown = uuid.uuid4()
    assert cache.get_or_load("key", unknown, missing) is None
    assert cache.get_or_load("key", unknown, missing) is None
    assert missing.calls == 2
    cache.close()


def test_without_a_listener_every_lookup_reads_the_database() -> None:
    cache = AuthCache("postgresql+psycopg://nobody@127.0.0.1:9/none")  # nothing listens on 9
    key, load = uuid.uuid4(), Loader()
    for _ in range(3):
        cache.get_or_load("key", key, load)
    assert load.calls == 3
    assert not cache.listening
    cache.close()


def test_a_lost_listener_connection_empties_the_cache_and_reconnects(
    cache: AuthCache, settings: Settings
) -> None:
    key, load = uuid.uuid4(), Loader()
    cache.get_or_load("key", key, load)
    with psycopg.connect(_dsn(settings), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    assert killed
    _wait(lambda: not cache.listening, timeout=15)  # noticed by the keepalive at the latest
    _wait(lambda: cache.listening, timeout=15)
    cache.get_or_load("key", key, load)
    assert load.calls == 2  # what was cached before the loss was dropped


def test_a_closed_cache_stops_listening_quietly_and_reads_uncached(
    cache: AuthCache, caplog: pytest.LogCaptureFixture
) -> None:
    key, load = uuid.uuid4(), Loader()
    cache.get_or_load("key", key, load)
    with caplog.at_level(logging.WARNING, logger="shared.services.auth_cache"):
        cache.close()
        assert cache.worker is not None
        cache.worker.join(5)
        assert not cache.worker.is_alive()
    assert not cache.listening
    cache.get_or_load("key", key, load)
    cache.get_or_load("key", key, load)
    assert load.calls == 3  # nothing served from the cache once closed
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
