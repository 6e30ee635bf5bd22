"""A per-process cache of who a credential is, invalidated by PostgreSQL notifications.

Every authenticated request used to read its API key or user row: a third of a read
request's CPU. The cache keeps those facts (never a secret; an API key's entry holds the
SHA-256 the presented secret is still compared against) for a short while.

Revocation stays immediate: the service that revokes (API key deleted, revoke-all)
calls `revoked()`, which drops the entry in this process at once and sends
`pg_notify` in the same transaction, so every other process drops it when the
revocation commits (milliseconds later). Each process listens on one dedicated
connection; while that listener is not connected (start-up, database restart), the
cache is bypassed and every request reads the row as before. Entries also expire after
`ttl_s`, a bound on staleness should a notification ever be lost silently.

A small hand-written class, not a caching library: what matters here is the coupling of
entries to the listener's state and the generation check below, which no general cache
offers.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session

from shared.background import Worker, start_worker
from shared.observability.metrics import AUTH_CACHE_LOOKUPS

log = logging.getLogger(__name__)

CHANNEL = "switchboard_auth"
APPLICATION_NAME = "switchboard-auth-cache"  # how ops spot the listeners in pg_stat_activity
KEEPALIVE_S = 10.0
WAKE_S = 1.0  # how soon a closed cache's listener notices
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_ENTRIES = 50_000
DEFAULT_TTL_S = 60.0

T = TypeVar("T")
_HIT, _MISS, _BYPASS = (AUTH_CACHE_LOOKUPS.labels(result) for result in ("hit", "miss", "bypass"))
Key = tuple[str, uuid.UUID]


class AuthCache:
    def __init__(self, database_url: str | None, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._dsn = _libpq_dsn(database_url) if database_url else None
        self._ttl_s = ttl_s
        self._entries: dict[Key, tuple[float, Any]] = {}
        # Bumped by every invalidation: a lookup that raced one does not store its row.
        self._generation = 0
        self._listening = False
        self._started = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.worker: Worker | None = None  # the listener, once started

    @property
    def listening(self) -> bool:
        return self._listening

    def get_or_load(self, kind: str, key: uuid.UUID, load: Callable[[], T | None]) -> T | None:
        """The cached value of (kind, key), else `load()`'s, kept only if it is still
        current: the listener is up and nothing was invalidated while it loaded."""
        self._start_listener()
        if not self._listening:
            _BYPASS.inc()
            return load()
        if (hit := self._entries.get((kind, key))) is not None:
            stored_at, value = hit
            if time.monotonic() - stored_at < self._ttl_s:
                _HIT.inc()
                return value
        _MISS.inc()
        generation = self._generation
        value = load()
        if value is not None and self._listening and generation == self._generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[(kind, key)] = (time.monotonic(), value)
        return value

    def invalidate(self, kind: str, key: uuid.UUID) -> None:
        self._generation += 1
        self._entries.pop((kind, key), None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def close(self) -> None:
        """Stop listening (the database is going away, or the process): lookups read the
        database uncached from now on. The listener ends at its next wake-up (at most
        KEEPALIVE_S later, at once if its connection drops) without a warning."""
        self._stopped.set()
        self._started = True  # never (re)started after this
        self._listening = False
        self.clear()

    def _start_listener(self) -> None:
        if self._started or self._dsn is None:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        # Started on first use, so a forked server worker gets its own after the fork.
        self.worker = start_worker(self._listen_forever, "auth-cache")

    def _listen_forever(self) -> None:
        backoff = MIN_BACKOFF_S
        while not self._stopped.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                if not self._stopped.is_set():
                    log.warning("auth cache listener lost (%s); reading credentials uncached", exc)
            except Exception:  # never let the thread die: the cache would stay bypassed
                log.exception("auth cache listener failed; reading credentials uncached")
            finally:
                if self._listening:  # it had worked: retry soon
                    backoff = MIN_BACKOFF_S
                self._listening = False
                self.clear()
            self._stopped.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _listen(self) -> None:
        assert self._dsn is not None
        with psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=5, application_name=APPLICATION_NAME
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.clear()  # whatever happened while not listening is unknown
            self._listening = not self._stopped.is_set()
            log.info("auth cache listening for revocations")
            pinged = time.monotonic()
            while not self._stopped.is_set():
                for note in conn.notifies(timeout=WAKE_S):
                    self._apply(note.payload)
                if time.monotonic() - pinged >= KEEPALIVE_S:
                    conn.execute("SELECT 1")  # a dead connection fails here, not silently
                    pinged = time.monotonic()

    def _apply(self, payload: str) -> None:
        kind, _, raw = payload.partition(":")
        try:
            self.invalidate(kind, uuid.UUID(raw))
        except ValueError:
            self.clear()


_caches: dict[str, AuthCache] = {}
_by_engine: weakref.WeakKeyDictionary[Engine, AuthCache] = weakref.WeakKeyDictionary()


def for_session(session: Session) -> AuthCache:
    """The process's cache for the session's database: one listener connection per
    database, whichever engines (or test connections) reach it."""
    engine = session.get_bind().engine
    if (cache := _by_engine.get(engine)) is None:
        dsn = engine.url.render_as_string(hide_password=False)
        if (cache := _caches.get(dsn)) is None:
            cache = _caches[dsn] = AuthCache(dsn)
        _by_engine[engine] = cache
    return cache


def close_for(database_url: str) -> None:
    """Stop this process's listeners on `database_url`'s database (before it is dropped)."""
    database = make_url(database_url).database
    for dsn, cache in list(_caches.items()):
        if make_url(dsn).database == database:
            cache.close()
            del _caches[dsn]


def revoked(session: Session, kind: str, key: uuid.UUID) -> None:
    """(kind, key) no longer authenticates as cached: drop it here now, and everywhere
    when `session` commits (NOTIFY is transactional: a rolled-back revocation sends
    nothing)."""
    for cache in _caches.values():
        cache.invalidate(kind, key)
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {
            "channel": CHANNEL,
            "payload": f"{kind}:{key}",
        },
    )


def _libpq_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
