"""Auth and API-key bodies."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import EmailStr, Field

from web.api.schemas.common import Input, Output


class RegisterIn(Input):
    organization: str = Field(min_length=1, max_length=200)
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)


class RegisterOut(Output):
    organization_id: uuid.UUID
    user_id: uuid.UUID


class LoginIn(Input):
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)


class RefreshIn(Input):
    refresh_token: str = Field(min_length=1, max_length=500)


class TokenPair(Output):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int


class ApiKeyIn(Input):
    name: str = Field(min_length=1, max_length=200)


class ApiKeyOut(Output):
    id: uuid.UUID
    name: str
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreated(Output):
    id: uuid.UUID
    name: str
    key: str
