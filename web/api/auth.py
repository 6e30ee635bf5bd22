"""/auth and /api-keys: thin handlers over shared.services.auth and api_keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app, g
from flask_jwt_extended import create_access_token

from shared.db.models import User
from shared.errors import Unauthorized
from shared.services import api_keys, auth
from web.api.context import db, principal
from web.api.routing import resource_blueprint
from web.api.schemas.auth import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    RefreshIn,
    RegisterIn,
    RegisterOut,
    TokenPair,
)
from web.api.schemas.common import IdPath, ListOut, ListQuery, page_out

bp = resource_blueprint("auth", secured=False)
keys_bp = resource_blueprint("api_keys")


def _refresh_lifetime() -> timedelta:
    return timedelta(days=current_app.config["REFRESH_TOKEN_DAYS"])


def _pair(user: User, refresh_token: str) -> dict[str, Any]:
    access = create_access_token(
        identity=str(user.id),
        additional_claims={"org": str(user.organization_id), "tv": user.token_version},
    )
    expires: timedelta = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    return TokenPair(
        access_token=access, refresh_token=refresh_token, expires_in=int(expires.total_seconds())
    ).model_dump()


@bp.post("/auth/register", responses={201: RegisterOut})
def register(body: RegisterIn) -> Any:
    user = auth.register(
        db(), organization=body.organization, email=body.email, password=body.password
    )
    return RegisterOut(organization_id=user.organization_id, user_id=user.id).model_dump(
        mode="json"
    ), 201


@bp.post("/auth/login", responses={200: TokenPair})
def login(body: LoginIn) -> Any:
    user = auth.authenticate(db(), email=body.email, password=body.password)
    return _pair(user, auth.issue_refresh(db(), user, _refresh_lifetime()))


@bp.post("/auth/refresh", responses={200: TokenPair})
def refresh(body: RefreshIn) -> Any:
    try:
        issued = auth.rotate_refresh(db(), body.refresh_token, _refresh_lifetime())
    except auth.TokenReuse:
        db().commit()  # the family revocation must stick although the answer is 401
        raise
    return _pair(issued.user, issued.token)


@bp.post("/auth/revoke", responses={204: None})
def revoke(body: RefreshIn) -> Any:
    auth.revoke(db(), body.refresh_token)
    return "", 204


@bp.post("/auth/revoke-all", responses={204: None}, security=[{"bearer": []}])
def revoke_all() -> Any:
    who = principal()
    if who.user_id is None:
        raise Unauthorized("revoke-all needs a user's access token, not an API key")
    auth.revoke_all(db(), who.user_id)
    g.pop("principal", None)
    return "", 204


@keys_bp.post("/api-keys", responses={201: ApiKeyCreated})
def create_key(body: ApiKeyIn) -> Any:
    created = api_keys.create(db(), principal(), body.name)
    return ApiKeyCreated(id=created.row.id, name=created.row.name, key=created.key).model_dump(
        mode="json"
    ), 201


@keys_bp.get("/api-keys", responses={200: ListOut[ApiKeyOut]})
def list_keys(query: ListQuery) -> Any:
    return page_out(ApiKeyOut, api_keys.list_keys(db(), principal(), query.limit, query.cursor))


@keys_bp.delete("/api-keys/<id>", responses={204: None})
def delete_key(path: IdPath) -> Any:
    api_keys.delete(db(), principal(), path.id)
    return "", 204
