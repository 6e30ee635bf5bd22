"""A local HubSpot CRM API with in-memory contacts and call engagements.

Serves what Switchboard calls, in HubSpot's shapes (ids as strings, `properties` of
strings, ISO `createdAt`/`updatedAt`, error bodies with status/message/category):

    POST /crm/v3/objects/contacts/search   filterGroups (OR) of filters (AND): EQ,
                                           CONTAINS_TOKEN, HAS_PROPERTY; sorts; limit
    POST /crm/v3/objects/contacts          create; 409 "Existing ID: n" on a taken email
    POST /crm/v3/objects/calls/search      as contacts
    POST /crm/v3/objects/calls             create with associations (recorded), 400 when
                                           hs_timestamp is missing or the contact unknown

Every request needs `Authorization: Bearer <token>`. `rate_limit(n)` makes the next n
requests answer 429 with Retry-After; `delay(path, seconds)` makes the next request to a
path answer late (after its effect is applied, as a slow server would).
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scripts.fakes.http_fake import HttpFake, Recorded, Reply

CONTACTS = "/crm/v3/objects/contacts"
CALLS = "/crm/v3/objects/calls"
CALL_TO_CONTACT = 194
DEFAULT_TOKEN = "test-token"  # noqa: S105 - the fake's own credential, not a secret
_DEFAULT_PROPERTIES = {
    "contacts": ("createdate", "hs_object_id", "lastmodifieddate"),
    "calls": ("hs_createdate", "hs_object_id", "hs_lastmodifieddate"),
}


@dataclass
class HubSpotObject:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str
    associations: list[dict[str, Any]] = field(default_factory=list)

    def shape(self, kind: str, wanted: list[str] | None = None) -> dict[str, Any]:
        names = set(_DEFAULT_PROPERTIES[kind]) | set(wanted if wanted is not None else [])
        if wanted is None:
            names |= set(self.properties)
        return {
            "id": self.id,
            "properties": {n: self.properties.get(n) for n in sorted(names)},
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


class FakeHubSpot:
    """The fake's state and controls; `start_fake_hubspot()` builds and starts one."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.contacts: dict[str, HubSpotObject] = {}
        self.engagements: dict[str, HubSpotObject] = {}
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._delays: dict[str, list[float]] = {}
        self.http = HttpFake(self._route)

    # Controls

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def requests(self) -> list[Recorded]:
        return self.http.requests

    def received(self, path: str, method: str = "POST") -> list[Recorded]:
        """Requests to exactly `path` (no query)."""
        return [r for r in self.http.received(path, method) if r.path.split("?")[0] == path]

    def start(self) -> FakeHubSpot:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()

    def fail_next(self, *replies: Reply) -> None:
        self.http.fail_next(*replies)

    def rate_limit(self, times: int = 1, retry_after: str = "1") -> None:
        """The next `times` requests (any path) answer 429 with Retry-After."""
        body = {
            "status": "error",
            "message": "You have reached your secondly limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": "SECONDLY",
        }
        self.fail_next(
            *[Reply(429, body, headers={"Retry-After": retry_after}) for _ in range(times)]
        )

    def delay(self, path: str, seconds: float, times: int = 1) -> None:
        """The next `times` requests to `path` are answered after `seconds`."""
        with self._lock:
            self._delays.setdefault(path, []).extend([seconds] * times)

    def add_contact(self, **properties: str) -> str:
        """Seed a contact; returns its id."""
        with self._lock:
            return self._store(self.contacts, dict(properties)).id

    def add_engagement(self, contact_id: str | None = None, **properties: str) -> str:
        with self._lock:
            obj = self._store(self.engagements, dict(properties))
            if contact_id:
                obj.associations.append(_association(contact_id))
            return obj.id

    # Serving

    def _route(self, recorded: Recorded) -> Reply:
        reply = self._answer(recorded)
        path = recorded.path.split("?")[0]
        with self._lock:
            delays = self._delays.get(path)
            if delays:
                reply.delay = delays.pop(0)
        return reply

    def _answer(self, recorded: Recorded) -> Reply:
        auth = recorded.headers.get("authorization", "")
        if auth != f"Bearer {self.token}":
            return _error(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            )
        handlers: dict[str, Callable[[dict[str, Any]], Reply]] = {
            CONTACTS + "/search": lambda body: self._search("contacts", self.contacts, body),
            CALLS + "/search": lambda body: self._search("calls", self.engagements, body),
            CONTACTS: self._create_contact,
            CALLS: self._create_call,
        }
        handler = handlers.get(recorded.path.split("?")[0])
        if handler is None or recorded.method != "POST":
            return _error(404, "Not found", "OBJECT_NOT_FOUND")
        try:
            body = recorded.json() or {}
        except ValueError:
            return _error(400, "Invalid input JSON on line 1", "VALIDATION_ERROR")
        if not isinstance(body, dict):
            return _error(400, "Invalid input JSON: expected an object", "VALIDATION_ERROR")
        with self._lock:
            return handler(body)

    def _search(self, kind: str, store: dict[str, HubSpotObject], body: dict[str, Any]) -> Reply:
        groups = body.get("filterGroups") or []
        matches = [o for o in store.values() if not groups or any(_group(o, g) for g in groups)]
        for sort in reversed(body.get("sorts") or []):
            name = str(sort.get("propertyName") if isinstance(sort, dict) else sort)
            descending = isinstance(sort, dict) and sort.get("direction") == "DESCENDING"
            matches.sort(key=_sort_key(name), reverse=descending)
        limit = int(body.get("limit") or 10)
        start = int(body.get("after") or 0)
        page = matches[start : start + limit]
        result: dict[str, Any] = {
            "total": len(matches),
            "results": [o.shape(kind, body.get("properties") or []) for o in page],
        }
        if start + limit < len(matches):
            result["paging"] = {"next": {"after": str(start + limit)}}
        return Reply(200, result)

    def _create_contact(self, body: dict[str, Any]) -> Reply:
        properties = _string_properties(body)
        if properties is None:
            return _error(400, "Property values were not valid", "VALIDATION_ERROR")
        email = (properties.get("email") or "").lower()
        if email:
            for existing in self.contacts.values():
                if (existing.properties.get("email") or "").lower() == email:
                    return _error(
                        409, f"Contact already exists. Existing ID: {existing.id}", "CONFLICT"
                    )
        return Reply(201, self._store(self.contacts, properties).shape("contacts"))

    def _create_call(self, body: dict[str, Any]) -> Reply:
        properties = _string_properties(body)
        if properties is None or not properties.get("hs_timestamp"):
            return _error(400, "Property values were not valid: hs_timestamp", "VALIDATION_ERROR")
        associations = body.get("associations") or []
        for association in associations:
            to = str((association.get("to") or {}).get("id"))
            types = association.get("types") or []
            if to not in self.contacts or not types:
                return _error(400, f"Invalid association to {to}", "VALIDATION_ERROR")
        obj = self._store(self.engagements, properties)
        obj.associations = list(associations)
        return Reply(201, obj.shape("calls"))

    def _store(self, store: dict[str, HubSpotObject], properties: dict[str, str]) -> HubSpotObject:
        now = _now()
        ident = str(next(self._ids))
        kind = "calls" if store is self.engagements else "contacts"
        created, modified = (
            ("hs_createdate", "hs_lastmodifieddate")
            if kind == "calls"
            else ("createdate", "lastmodifieddate")
        )
        obj = HubSpotObject(
            id=ident,
            properties={
                **properties,
                created: now,
                modified: now,
                "hs_object_id": ident,
            },
            created_at=now,
            updated_at=now,
        )
        store[ident] = obj
        return obj


def start_fake_hubspot(token: str = DEFAULT_TOKEN) -> FakeHubSpot:
    """Start a fake HubSpot; point HUBSPOT_API_URL at `fake.url`."""
    return FakeHubSpot(token).start()


def _sort_key(name: str) -> Callable[[HubSpotObject], str]:
    return lambda obj: obj.properties.get(name) or ""


def _group(obj: HubSpotObject, group: dict[str, Any]) -> bool:
    return all(_filter(obj, f) for f in group.get("filters") or [])


def _filter(obj: HubSpotObject, flt: dict[str, Any]) -> bool:
    actual = obj.properties.get(str(flt.get("propertyName")))
    operator, value = flt.get("operator"), str(flt.get("value", ""))
    if operator == "HAS_PROPERTY":
        return bool(actual)
    if actual is None:
        return False
    if operator == "EQ":  # HubSpot compares strings case-insensitively
        return actual.lower() == value.lower()
    if operator == "CONTAINS_TOKEN":
        return value.lower() in actual.lower().split()
    return False


def _string_properties(body: dict[str, Any]) -> dict[str, str] | None:
    properties = body.get("properties")
    if not isinstance(properties, dict):
        return None
    if not all(isinstance(v, str) for v in properties.values()):
        return None
    return dict(properties)


def _association(contact_id: str) -> dict[str, Any]:
    return {
        "to": {"id": contact_id},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": CALL_TO_CONTACT}],
    }


def _error(status: int, message: str, category: str) -> Reply:
    return Reply(
        status,
        {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
            "category": category,
        },
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
