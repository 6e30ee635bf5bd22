"""Per-request state: one database session, and the principal the request acts as."""

from __future__ import annotations

import uuid

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import Unauthorized
from shared.services import api_keys, auth
from shared.services.principal import Principal

READ_METHODS = frozenset({"GET", "HEAD"})


def db() -> Session:
    """The request's session, opened on first use; committed only if the response succeeds.
    Reads (GET, HEAD) get an autocommit session when the app has one (see engine.py)."""
    if "db" not in g:
        reads: sessionmaker[Session] | None = current_app.extensions["read_session_factory"]
        factory: sessionmaker[Session] = current_app.extensions["session_factory"]
        g.autocommit = reads is not None and request.method in READ_METHODS
        g.db = reads() if reads is not None and g.autocommit else factory()
    return g.db


def _finish(response: Response) -> Response:
    session: Session | None = g.pop("db", None)
    if session is not None:
        try:
            # An autocommit session has nothing to end: each statement committed as it ran.
            if g.autocommit:
                pass
            elif response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()
    return response


def _discard(exc: BaseException | None) -> None:
    session: Session | None = g.pop("db", None)
    if session is not None:
        session.rollback()
        session.close()


def principal() -> Principal:
    if "principal" not in g:
        g.principal = _authenticate()
    return g.principal


def _authenticate() -> Principal:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthorized("send Authorization: Bearer <access token or API key>")
    credential = credential.strip()
    if api_keys.looks_like_key(credential):
        return api_keys.authenticate(db(), credential)
    verify_jwt_in_request()
    claims = get_jwt()
    return auth.access_principal(db(), uuid.UUID(claims["sub"]), claims.get("tv"))


def init_app(
    app: Flask, factory: sessionmaker[Session], read_factory: sessionmaker[Session] | None = None
) -> None:
    app.extensions["session_factory"] = factory
    app.extensions["read_session_factory"] = read_factory
    app.after_request(_finish)
    app.teardown_request(_discard)
