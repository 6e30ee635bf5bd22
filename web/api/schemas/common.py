"""Shapes shared by every resource: strict inputs, E.164 numbers, lists and paths."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Generic, TypeVar

import phonenumbers
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def _check_e164(value: str) -> str:
    if not _E164.match(value):
        raise ValueError("must be an E.164 number such as +14155550123")
    try:
        possible = phonenumbers.is_possible_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        possible = False
    if not possible:
        raise ValueError("is not a possible phone number")
    return value


E164 = Annotated[str, AfterValidator(_check_e164), Field(examples=["+14155550123"])]


class Input(BaseModel):
    """Base for request bodies and queries: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """As pydantic's, but the default (argument-less) schema is built once per model.

        flask-openapi3 asks for it on every request with a query model, only to look up
        which fields are lists, and pydantic builds it afresh each time: a few ms per
        request. Callers must not mutate the cached dict (flask-openapi3 only reads it).
        """
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        if (schema := _DEFAULT_SCHEMAS.get(cls)) is None:
            schema = _DEFAULT_SCHEMAS[cls] = super().model_json_schema()
        return schema


_DEFAULT_SCHEMAS: dict[type[Input], dict[str, Any]] = {}


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ListQuery(Input):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)


T = TypeVar("T")


class ListOut(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


class IdPath(BaseModel):
    id: uuid.UUID


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def page_out(model: type[Output], page: Any) -> dict[str, Any]:
    """A page of ORM objects, each shown as `model`."""
    return {
        "data": [model.model_validate(item).model_dump(mode="json") for item in page.items],
        "next_cursor": page.next_cursor,
    }
