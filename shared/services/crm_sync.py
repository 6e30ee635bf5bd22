"""CRM sync both ways: our calls out to HubSpot, HubSpot contact edits back to customers.

Outbound: a call becomes one HubSpot call engagement on its customer's contact. The
customer's contact is its `crm_contact_id`, else the oldest HubSpot contact with its phone,
else a new one. Ids are stored on the rows; the caller commits (never done here).
Concurrent syncs of one customer or one call are serialized with transaction-scoped
advisory locks, so two workers cannot both create a contact or an engagement.

Inbound: HubSpot webhook events (contact.propertyChange for firstname, lastname, email,
phone; contact.deletion) are mapped onto every customer linked to that contact, in any
tenant. Invalid values are ignored with a logged reason, never stored.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Call, Customer
from shared.providers.crm.hubspot import CallEngagement, engagement_marker

log = logging.getLogger(__name__)

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_PHONE_PUNCTUATION = re.compile(r"[\s().\-]")
_NAME_MAX = 200  # customers.name
_EMAIL_MAX = 320  # customers.email
_LOCK_CONTACT = 0x43524D43  # "CRMC": advisory lock namespace for a customer's contact
_LOCK_CALL = 0x43524D45  # "CRME": advisory lock namespace for a call's engagement


class CrmClient(Protocol):
    """What sync needs from a CRM client (shared.providers.crm.hubspot.HubSpotClient)."""

    def find_contact_by_phone(self, phone: str) -> str | None: ...

    def create_contact(
        self, phone: str, name: str | None = None, email: str | None = None
    ) -> str: ...

    def find_call_engagement(self, marker: str) -> str | None: ...

    def create_call_engagement(self, engagement: CallEngagement) -> str: ...


# Outbound


def link_contact(session: Session, customer: Customer, client: CrmClient) -> str:
    """The customer's CRM contact id: stored, else found by phone, else created; stored on
    the customer (flushed, not committed)."""
    if customer.crm_contact_id:
        return customer.crm_contact_id
    _lock(session, _LOCK_CONTACT, customer.id)
    # Another worker may have linked it while we waited: read what it committed.
    linked = session.scalar(select(Customer.crm_contact_id).where(Customer.id == customer.id))
    if linked:
        customer.crm_contact_id = linked
        return linked
    contact_id = client.find_contact_by_phone(customer.phone) or client.create_contact(
        customer.phone, customer.name, customer.email
    )
    customer.crm_contact_id = contact_id
    session.flush()
    log.info("customer linked to CRM contact", extra={"customer_id": str(customer.id)})
    return contact_id


def sync_call(session: Session, call: Call, client: CrmClient) -> str | None:
    """Log the call in the CRM once; return its engagement id, or None if the call has no
    customer to log it on. A call already synced is skipped (its id is returned)."""
    if call.crm_engagement_id:
        return call.crm_engagement_id
    customer = _customer_of(session, call)
    if customer is None:
        log.info("call has no customer with a phone: not synced", extra={"call_id": str(call.id)})
        return None
    contact_id = link_contact(session, customer, client)
    _lock(session, _LOCK_CALL, call.id)
    synced = session.scalar(select(Call.crm_engagement_id).where(Call.id == call.id))
    if synced:
        call.crm_engagement_id = synced
        return synced
    marker = engagement_marker(call.id)
    engagement_id = client.find_call_engagement(marker)
    if engagement_id is None:
        engagement_id = client.create_call_engagement(_engagement(call, contact_id, marker))
    else:  # created before a crash, never recorded here
        log.info("CRM engagement found by marker: reused", extra={"call_id": str(call.id)})
    call.crm_engagement_id = engagement_id
    session.flush()
    return engagement_id


def _customer_of(session: Session, call: Call) -> Customer | None:
    if call.customer_id is None:
        return None
    customer = session.get(Customer, call.customer_id)
    if customer is None or customer.organization_id != call.organization_id or not customer.phone:
        return None
    return customer


def _engagement(call: Call, contact_id: str, marker: str) -> CallEngagement:
    return CallEngagement(
        marker=marker,
        contact_id=contact_id,
        occurred_at=call.ended_at or call.created_at,
        direction=call.direction,
        status=call.status,
        summary=call.summary,
        outcome=call.outcome,
        duration_seconds=call.duration_seconds,
        from_number=call.from_number,
        to_number=call.to_number,
        recording_url=call.recording_url,
    )


def _lock(session: Session, namespace: int, key: uuid.UUID) -> None:
    """A transaction-scoped advisory lock on (namespace, 32 bits of the id)."""
    objid = int.from_bytes(key.bytes[:4], "big", signed=True)
    session.execute(select(func.pg_advisory_xact_lock(namespace, objid)))


# Inbound


def apply_contact_change(session: Session, portal_events: Iterable[Mapping[str, Any]]) -> int:
    """Apply HubSpot contact events to linked customers; return how many customer rows
    changed. Events of other types, or for contacts no customer links, are ignored."""
    changed = 0
    for event in portal_events:
        kind = event.get("subscriptionType")
        object_id = event.get("objectId")
        if object_id is None or isinstance(object_id, bool):
            continue
        if kind == "contact.propertyChange":
            changed += _apply_property(session, str(object_id), event)
        elif kind == "contact.deletion":
            changed += _unlink(session, str(object_id))
    if changed:
        session.flush()
    return changed


def _linked(session: Session, contact_id: str) -> list[Customer]:
    return list(
        session.scalars(
            select(Customer).where(Customer.crm_contact_id == contact_id).order_by(Customer.id)
        )
    )


def _unlink(session: Session, contact_id: str) -> int:
    customers = _linked(session, contact_id)
    for customer in customers:
        customer.crm_contact_id = None
        customer.updated_at = datetime.now(UTC)
    if customers:
        log.info("CRM contact deleted: customers unlinked", extra={"count": len(customers)})
    return len(customers)


class _Rejected(ValueError):
    """A CRM value we will not store; the message is the reason."""


def _apply_property(session: Session, contact_id: str, event: Mapping[str, Any]) -> int:
    prop = event.get("propertyName")
    if prop not in ("firstname", "lastname", "email", "phone"):
        return 0
    raw = event.get("propertyValue")
    value = "" if raw is None else str(raw)
    changed = 0
    for customer in _linked(session, contact_id):
        try:
            field, new = _new_value(session, customer, str(prop), value)
        except _Rejected as exc:
            # The reason, not the value: CRM values are personal data.
            log.warning(
                "CRM %s change ignored: %s",
                prop,
                exc,
                extra={"customer_id": str(customer.id), "event_id": str(event.get("eventId"))},
            )
            continue
        if getattr(customer, field) != new:
            setattr(customer, field, new)
            customer.updated_at = datetime.now(UTC)
            changed += 1
    return changed


def _new_value(
    session: Session, customer: Customer, prop: str, value: str
) -> tuple[str, str | None]:
    """(customer field, its new value) for one HubSpot property; _Rejected if invalid."""
    if prop in ("firstname", "lastname"):
        return "name", _name_with(customer.name, prop, value)
    if prop == "email":
        return "email", _email(value)
    phone = _e164(value)
    if phone != customer.phone and _phone_taken(session, customer, phone):
        raise _Rejected("another customer of the tenant has that phone")
    return "phone", phone


def _name_with(current: str | None, part: str, value: str) -> str | None:
    """`current` with its first word (firstname) or the rest (lastname) replaced: the
    customer has one name field, HubSpot two."""
    cleaned = " ".join(value.split())
    if any(unicodedata.category(ch).startswith("C") for ch in cleaned):
        raise _Rejected("name has control characters")
    first, _, last = (current or "").strip().partition(" ")
    if part == "firstname":
        first = cleaned
    else:
        last = cleaned
    name = " ".join(p for p in (first.strip(), last.strip()) if p)
    if len(name) > _NAME_MAX:
        raise _Rejected(f"name is longer than {_NAME_MAX} characters")
    return name or None


def _email(value: str) -> str | None:
    """A valid address (normalized), or None when the CRM cleared it."""
    value = value.strip()
    if not value:
        return None
    if len(value) > _EMAIL_MAX:
        raise _Rejected("email is too long")
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise _Rejected("email is not a valid address") from exc


def _e164(value: str) -> str:
    """E.164, accepting the separators people type ("+1 (415) 555-0123"); a number without
    its country code is refused (there is no region to read it in), and so is an empty
    one (a customer is known by its phone)."""
    value = _PHONE_PUNCTUATION.sub("", value.strip())
    if not value:
        raise _Rejected("phone was cleared in the CRM; a customer needs one")
    if not _E164.match(value):
        raise _Rejected("phone is not an E.164 number")
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise _Rejected("phone is not an E.164 number") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise _Rejected("phone is not a possible number")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _phone_taken(session: Session, customer: Customer, phone: str) -> bool:
    return (
        session.scalar(
            select(Customer.id).where(
                Customer.organization_id == customer.organization_id,
                Customer.phone == phone,
                Customer.id != customer.id,
            )
        )
        is not None
    )
