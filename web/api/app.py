"""The `web` process's Flask app factory: REST API, webhooks, ops endpoints."""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import redis
from flask import request
from flask_jwt_extended import JWTManager
from flask_openapi3.models.info import Info
from flask_openapi3.openapi import OpenAPI
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from shared.config import Settings
from shared.db.engine import make_autocommit_session_factory, make_engine, make_session_factory
from shared.queue.broker import build_broker
from web import http_common
from web.api import agents, auth, calls, context, customers, ops, problems
from web.api.routing import API_PREFIX
from web.api.webhooks import hubspot, stripe, telnyx

WEBHOOK_PREFIX = f"{API_PREFIX}/webhooks"

BLUEPRINTS = (auth.bp, auth.keys_bp, agents.bp, agents.numbers_bp, customers.bp, calls.bp)
WEBHOOKS = (*telnyx.blueprints, *stripe.blueprints, *hubspot.blueprints)


def create_app(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session] | None = None,
    redis_client: redis.Redis | None = None,
    broker: dramatiq.Broker | None = None,
) -> OpenAPI:
    app = OpenAPI(
        __name__,
        info=Info(title="Switchboard API", version="1.0.0"),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        doc_ui=False,
        validation_error_callback=problems.validation_problem,
    )
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JWT_SECRET_KEY=settings.signing_key,
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=settings.access_token_minutes),
        REFRESH_TOKEN_DAYS=settings.refresh_token_days,
        JWT_TOKEN_LOCATION=["headers"],
    )
    read_factory = None
    if session_factory is None:
        engine = make_engine(settings.require_database_url(), pool_size=settings.db_pool_size)
        session_factory = make_session_factory(engine)
        read_factory = make_autocommit_session_factory(engine)
    app.extensions["redis"] = redis_client or redis.Redis.from_url(
        settings.require_redis_url(), socket_timeout=2, socket_connect_timeout=2
    )
    app.extensions["broker"] = broker or build_broker(settings)
    http_common.install(app, "web")
    context.init_app(app, session_factory, read_factory)
    _init_jwt(app)
    problems.register(app)
    app.before_request(_require_json_body)
    for bp in (*BLUEPRINTS, *WEBHOOKS):
        app.register_api(bp)
    app.register_blueprint(ops.bp)
    return app


def _require_json_body() -> None:
    """API bodies must be JSON that parses: 415 / 400 here, before any validation."""
    if not request.path.startswith(API_PREFIX) or request.method not in ("POST", "PUT", "PATCH"):
        return
    if request.path.startswith(WEBHOOK_PREFIX):  # raw bodies: verified before any parsing
        return
    if not request.content_length and not request.data:
        return
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    try:
        request.get_json()
    except BadRequest as exc:
        raise BadRequest("the body is not valid JSON") from exc


def _init_jwt(app: OpenAPI) -> None:
    jwt = JWTManager(app)

    def rejected(reason: str):  # type: ignore[no-untyped-def]
        return problems.problem(401, "Unauthorized", reason)

    jwt.unauthorized_loader(rejected)
    jwt.invalid_token_loader(lambda reason: rejected(f"access token is invalid: {reason}"))
    jwt.expired_token_loader(lambda header, payload: rejected("access token has expired"))
    jwt.revoked_token_loader(lambda header, payload: rejected("access token has been revoked"))
