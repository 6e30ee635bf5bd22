"""Per-request state: one database session, and the principal the request acts as."""

from __future__ import annotations

import uuid

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import User
from shared.errors import Unauthorized
from shared.services import api_keys
from shared.services.principal import Principal


def db() -> Session:
    """The request's session, opened on first use; committed only if the response succeeds."""
    if "db" not in g:
        factory: sessionmaker[Session] = current_app.extensions["session_factory"]
        g.db = factory()
    return g.db


def _finish(response: Response) -> Response:
    session: Session | None = g.pop("db", None)
    if session is not None:
        try:
            if response.status_code < 400:
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
    user = db().get(User, uuid.UUID(claims["sub"]))
    if user is None or user.token_version != claims.get("tv"):
        raise Unauthorized("access token has been revoked")
    return Principal(organization_id=user.organization_id, user_id=user.id)


def init_app(app: Flask, factory: sessionmaker[Session]) -> None:
    app.extensions["session_factory"] = factory
    app.after_request(_finish)
    app.teardown_request(_discard)
