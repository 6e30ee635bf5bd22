"""Engine and session scope: the caller owns the session, query functions never commit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

# A pooled connection idle for longer than this is pinged before use (the server may have
# restarted or a firewall dropped it). One in steady use is not: pool_pre_ping's round
# trip on every checkout cost ~6% of a read request's CPU. Should a busy connection die
# anyway, its statement fails once and SQLAlchemy invalidates the pool, so the next
# checkouts reconnect.
PING_AFTER_IDLE_S = 5.0


def make_engine(database_url: str, *, pool_size: int = 10) -> Engine:
    engine = create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # JSONB columns (every webhook's payload, agents' knowledge) through orjson.
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )
    _ping_idle_connections(engine)
    return engine


def _json_dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _ping_idle_connections(engine: Engine) -> None:
    """pool_pre_ping, for connections idle longer than PING_AFTER_IDLE_S only."""

    @event.listens_for(engine, "checkin")
    def checked_in(dbapi_connection: DBAPIConnection, entry: ConnectionPoolEntry) -> None:
        entry.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checked_out(
        dbapi_connection: DBAPIConnection, entry: ConnectionPoolEntry, _: PoolProxiedConnection
    ) -> None:
        idle_since = entry.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("pooled connection is gone") from exc  # pool reconnects


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_autocommit_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose statements each commit on their own (no BEGIN / COMMIT round trips),
    on the same pool. For work that only reads, or writes with a single statement: at
    PostgreSQL's default READ COMMITTED every statement takes its own snapshot inside a
    transaction too, so reads see nothing different, and a lone write (an API key's
    last_used_at, a call turn) is atomic by itself."""
    return sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
