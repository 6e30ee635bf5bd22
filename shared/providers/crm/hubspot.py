"""HubSpot CRM over the official SDK (hubspot-api-client), every request through the guard.

Contacts are found by phone (not a unique property in HubSpot, so the oldest match wins) or
created; each call becomes one call engagement associated to its contact (type 194).

Idempotency. A create is not idempotent in HubSpot, and a worker may die after HubSpot
stored an engagement but before our commit recorded its id. Each engagement therefore
carries a marker unique to our call in its title, `Switchboard call [switchboard:<call id>]`,
and the title is searched with `EQ` before anything is created:

* `EQ` on a string property matches the whole value (case-insensitively), so only the
  title built from this call id matches. `CONTAINS_TOKEN` tokenizes the value on
  punctuation (`:` and the UUID's `-`), so it would compare fragments of the id, which is
  both weaker and less predictable.
* The same search runs again before a create is retried inside one guarded call, so a
  create that timed out after HubSpot stored it is reused, not repeated.

HubSpot's search index lags writes by a few seconds, so an engagement created moments
before a crash may not be found yet; queue retries (>= 2 s backoff, 60 s for a lost worker)
make that window small.

The SDK's own urllib3 retries are off (`Retry(total=0)`): the guard is the one retry layer.
Its errors classify as the guard expects: `ApiException` carries `.status` and `.headers`
(429 with Retry-After and 5xx are transient, other statuses permanent), and connection
errors and timeouts surface as urllib3 exceptions (transient).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hubspot import HubSpot
from hubspot.crm import contacts as hs_contacts
from hubspot.crm.objects import calls as hs_calls
from urllib3.util.retry import Retry

from shared import resilience

PROVIDER = "hubspot"
CALL_TO_CONTACT = 194  # HUBSPOT_DEFINED association type: call → contact
SEARCH_LIMIT = 100
MARKER_PREFIX = "switchboard:"
T = TypeVar("T")

# Our call statuses (shared.services.call_status) → hs_call_status.
CALL_STATUS = {
    "queued": "QUEUED",
    "dialing": "CONNECTING",
    "ringing": "RINGING",
    "in_progress": "IN_PROGRESS",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "busy": "BUSY",
    "no_answer": "NO_ANSWER",
    "canceled": "CANCELED",
}
_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")


def engagement_marker(call_id: object) -> str:
    """The marker that identifies our call's engagement in HubSpot."""
    return f"{MARKER_PREFIX}{call_id}"


def engagement_title(marker: str) -> str:
    """hs_call_title, a pure function of the marker: searched with EQ, so never vary it."""
    return f"Switchboard call [{marker}]"


@dataclass(frozen=True)
class CallEngagement:
    """What one call engagement says; `properties()` is its HubSpot form."""

    marker: str
    contact_id: str
    occurred_at: datetime
    direction: str  # "inbound" | "outbound"
    status: str  # our call status
    summary: str | None = None
    outcome: str | None = None
    duration_seconds: float | None = None
    from_number: str | None = None
    to_number: str | None = None
    recording_url: str | None = None

    def properties(self) -> dict[str, str]:
        props = {
            "hs_timestamp": _iso_utc(self.occurred_at),
            "hs_call_title": engagement_title(self.marker),
            "hs_call_body": call_body(self.summary, self.outcome),
            "hs_call_direction": "OUTBOUND" if self.direction == "outbound" else "INBOUND",
            "hs_call_status": CALL_STATUS.get(self.status, "COMPLETED"),
        }
        if self.duration_seconds is not None and self.duration_seconds >= 0:
            props["hs_call_duration"] = str(round(self.duration_seconds * 1000))
        if self.from_number:
            props["hs_call_from_number"] = self.from_number
        if self.to_number:
            props["hs_call_to_number"] = self.to_number
        if self.recording_url and _is_https(self.recording_url):
            props["hs_call_recording_url"] = self.recording_url
        return props


class HubSpotClient:
    """The few HubSpot operations Switchboard needs. Thread-safe; build one per process.

    `guard` is the resilience guard to call through: `resilience.guard("hubspot")` unless
    a test passes its own."""

    def __init__(
        self,
        access_token: str,
        base_url: str = "https://api.hubapi.com",
        *,
        guard: resilience.Guard | None = None,
    ) -> None:
        sdk = HubSpot(access_token=access_token, host=base_url.rstrip("/"), retry=Retry(total=0))
        # Each discovery property builds a new ApiClient (and connection pool): keep them.
        self._contacts = sdk.crm.contacts.basic_api
        self._contacts_search = sdk.crm.contacts.search_api
        self._calls = sdk.crm.objects.calls.basic_api
        self._calls_search = sdk.crm.objects.calls.search_api
        self._guard = guard or resilience.guard(PROVIDER)

    # Contacts

    def find_contact_by_phone(self, phone: str) -> str | None:
        """The id of the oldest contact whose `phone` equals `phone`, or None."""
        return self._call(lambda timeout: self._search_contacts(phone, timeout))

    def create_contact(self, phone: str, name: str | None = None, email: str | None = None) -> str:
        """Create a contact and return its id. If HubSpot already has the email (409), the
        existing contact's id is returned; a retried create first looks for the phone."""
        properties = {"phone": phone, **_name_properties(name)}
        if email:
            properties["email"] = email
        body = hs_contacts.SimplePublicObjectInputForCreate(properties=properties, associations=[])

        def create(timeout: float) -> str:
            try:
                return str(
                    self._contacts.create(
                        simple_public_object_input_for_create=body, _request_timeout=timeout
                    ).id
                )
            except hs_contacts.ApiException as exc:
                existing = _existing_id(exc)
                if existing is None:
                    raise
                return existing

        return self._create_once(lambda timeout: self._search_contacts(phone, timeout), create)

    # Call engagements

    def find_call_engagement(self, marker: str) -> str | None:
        """The id of the (oldest) call engagement carrying `marker`, or None."""
        return self._call(lambda timeout: self._search_calls(marker, timeout))

    def create_call_engagement(self, engagement: CallEngagement) -> str:
        """Create the engagement associated to its contact (194) and return its id; a
        retried create first looks for the marker, so one that landed is reused."""
        body = hs_calls.SimplePublicObjectInputForCreate(
            properties=engagement.properties(),
            associations=[
                hs_calls.PublicAssociationsForObject(
                    to=hs_calls.PublicObjectId(id=engagement.contact_id),
                    types=[
                        hs_calls.AssociationSpec(
                            association_category="HUBSPOT_DEFINED",
                            association_type_id=CALL_TO_CONTACT,
                        )
                    ],
                )
            ],
        )

        def create(timeout: float) -> str:
            created = self._calls.create(
                simple_public_object_input_for_create=body, _request_timeout=timeout
            )
            return str(created.id)

        return self._create_once(
            lambda timeout: self._search_calls(engagement.marker, timeout), create
        )

    # Internals

    def _call(self, attempt: Callable[[float], T]) -> T:
        return self._guard.call(attempt)

    def _create_once(
        self, find: Callable[[float], str | None], create: Callable[[float], str]
    ) -> str:
        """One guarded create whose retries look first: a create that timed out (or whose
        answer was lost) may have been stored by HubSpot."""
        tried = False

        def attempt(timeout: float) -> str:
            nonlocal tried
            if tried:
                existing = find(timeout)
                if existing is not None:
                    return existing
            tried = True
            return create(timeout)

        return self._call(attempt)

    def _search_contacts(self, phone: str, timeout: float) -> str | None:
        request = hs_contacts.PublicObjectSearchRequest(
            filter_groups=[
                hs_contacts.FilterGroup(
                    filters=[hs_contacts.Filter(property_name="phone", operator="EQ", value=phone)]
                )
            ],
            properties=["phone", "createdate"],
            sorts=[{"propertyName": "createdate", "direction": "ASCENDING"}],
            limit=SEARCH_LIMIT,
        )
        page = self._contacts_search.do_search(
            public_object_search_request=request, _request_timeout=timeout
        )
        return oldest_id(page.results or [])

    def _search_calls(self, marker: str, timeout: float) -> str | None:
        request = hs_calls.PublicObjectSearchRequest(
            filter_groups=[
                hs_calls.FilterGroup(
                    filters=[
                        hs_calls.Filter(
                            property_name="hs_call_title",
                            operator="EQ",
                            value=engagement_title(marker),
                        )
                    ]
                )
            ],
            properties=["hs_call_title", "hs_createdate"],
            sorts=[{"propertyName": "hs_createdate", "direction": "ASCENDING"}],
            limit=SEARCH_LIMIT,
        )
        page = self._calls_search.do_search(
            public_object_search_request=request, _request_timeout=timeout
        )
        return oldest_id(page.results or [])


def oldest_id(objects: Sequence[Any]) -> str | None:
    """Deterministic pick among duplicates: earliest createdAt, then the smallest id."""
    if not objects:
        return None

    def key(obj: Any) -> tuple[float, int, str]:
        created = obj.created_at
        when = created.timestamp() if isinstance(created, datetime) else float("inf")
        ident = str(obj.id)
        return (when, int(ident) if ident.isdigit() else 0, ident)

    return str(min(objects, key=key).id)


def call_body(summary: str | None, outcome: str | None) -> str:
    """hs_call_body is rich text: our plain text goes in escaped."""
    parts = []
    if outcome:
        parts.append(f"<p><strong>Outcome:</strong> {html.escape(outcome)}</p>")
    if summary:
        parts.append(f"<p>{html.escape(summary)}</p>")
    return "".join(parts) or "<p>No summary.</p>"


def _name_properties(name: str | None) -> dict[str, str]:
    first, _, last = (name or "").strip().partition(" ")
    props = {}
    if first:
        props["firstname"] = first
    if last.strip():
        props["lastname"] = last.strip()
    return props


def _existing_id(exc: Any) -> str | None:
    """The contact id from a 409 "Contact already exists. Existing ID: 123" answer."""
    if getattr(exc, "status", None) != 409 or not exc.body:
        return None
    try:
        message = json.loads(exc.body).get("message", "")
    except (ValueError, AttributeError):
        return None
    match = _EXISTING_ID.search(str(message))
    return match.group(1) if match else None


def _iso_utc(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_https(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(parts.netloc)
