"""Prebuilt Core statements executed by psycopg itself, for the API's hottest reads.

SQLAlchemy still builds the statement (and compiles it, once), and the session still owns
the connection and its scope; only the execution skips SQLAlchemy's per-call work (cache
key, execution context, result metadata, Row objects), which measured ~20 % of a read
request's CPU in scripts/bench/api.py. psycopg prepares the statement server-side after
a few runs, so PostgreSQL does not plan it again either. Use it only for statements built
once (module-level or memoised) with bound parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Dialect, Select
from sqlalchemy.orm import Session


def driver_rows(session: Session, stmt: Select[Any], params: Mapping[str, Any]) -> list[Any]:
    """The rows (plain tuples) of `stmt` with `params`, on the session's connection."""
    connection = session.connection()
    sql = _compiled(stmt, connection.dialect)
    driver_connection: Any = connection.connection.driver_connection
    # Binary results: uuid and timestamptz decode faster than from text (~15 % of a
    # 50-row page's fetch).
    with driver_connection.cursor(binary=True) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall()


@functools.cache
def _compiled(stmt: Select[Any], dialect: Dialect) -> str:
    return str(stmt.compile(dialect=dialect))
