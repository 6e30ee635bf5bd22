"""Billing rules: what Stripe's events mean for an organization, and whether it may place calls.

Which organization: the subscription's `metadata.organization_id` (our checkout sets it).
For an invoice, the subscription metadata snapshotted on it
(`parent.subscription_details.metadata`, or the older top-level `subscription_details`),
then the invoice's own `metadata`; with no `organization_id` in any of them, the
organization whose `stripe_customer_id` is the invoice's `customer`. An id that is
missing, not a UUID or not an organization is logged and the event changes nothing: it
is not the sender's fault, and refusing it would only make Stripe redeliver it for days.

Subscription status → `billing_status` (created and updated events):

    active, trialing                               → active
    past_due                                       → past_due (past_due_since = event time,
                                                     kept while it stays past_due)
    unpaid, canceled, incomplete_expired, paused   → suspended
    incomplete (first payment pending), or a
    status Stripe adds later                       → unchanged (plan unchanged too)

`past_due_since` is set exactly while `billing_status` is past_due, and cleared otherwise.

A deleted subscription (`customer.subscription.deleted`, whose object says `canceled`) is
read as "no subscription": the organization falls back to the free plan, `billing_status`
active, `subscription_status` canceled. The issue's two rules agree under this reading:
an organization with no subscription is on the free plan and may call; one whose
*current* subscription is unpaid / canceled / incomplete_expired / paused is suspended.
It also makes the failure modes benign: the free plan is what any new sign-up gets, so a
deleted subscription grants nothing extra, and a deletion of an old subscription that
races a new one can never lock out a paying customer.

`invoice.payment_failed` starts the grace period (past_due) unless the organization is
already suspended; repeated failures (Stripe sends one per retry) do not restart it.

Ordering: Stripe does not deliver in order. Every applied event stamps its `created` on
`Organization.billing_updated_at`; an event created earlier than that is ignored (the
event row is still stored, so it is not redelivered). Events created in the same second
are applied in arrival order: `created` has one-second resolution.

Grace: `PAST_DUE_GRACE` is 7 days. One week is the shortest retry window Stripe offers
(Stripe's recommended default is 8 tries within 2 weeks), enough for the first retries, the
dunning e-mails and a card replacement over a weekend; we do not wait out the full Stripe
cycle because every call minute costs us carrier, speech and model fees that an unpaid
account will not cover. Stripe's own end of the cycle (unpaid / canceled) suspends at once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Organization
from shared.errors import NotFound, PaymentRequired
from shared.providers.billing.stripe_webhooks import StripeEvent

log = logging.getLogger(__name__)

PAST_DUE_GRACE = timedelta(days=7)

ACTIVE = "active"
PAST_DUE = "past_due"
SUSPENDED = "suspended"
FREE_PLAN = "free"
PAID_PLAN = "paid"  # a subscription whose price carries no name

SUBSCRIPTION_CREATED = "customer.subscription.created"
SUBSCRIPTION_UPDATED = "customer.subscription.updated"
SUBSCRIPTION_DELETED = "customer.subscription.deleted"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
HANDLED = frozenset(
    {SUBSCRIPTION_CREATED, SUBSCRIPTION_UPDATED, SUBSCRIPTION_DELETED, INVOICE_PAYMENT_FAILED}
)

_BILLING_STATUS = {
    "active": ACTIVE,
    "trialing": ACTIVE,
    "past_due": PAST_DUE,
    "unpaid": SUSPENDED,
    "canceled": SUSPENDED,
    "incomplete_expired": SUSPENDED,
    "paused": SUSPENDED,
}
_PLAN_LENGTH = 40  # organizations.plan
_STATUS_LENGTH = 40  # organizations.subscription_status
_CUSTOMER_LENGTH = 100  # organizations.stripe_customer_id


def apply_event(session: Session, event: StripeEvent) -> uuid.UUID | None:
    """Apply one verified Stripe event; return the organization it concerned, if any.

    Event types not listed in HANDLED are a no-op (the caller has stored them).
    """
    if event.type in (SUBSCRIPTION_CREATED, SUBSCRIPTION_UPDATED, SUBSCRIPTION_DELETED):
        return _apply_subscription(session, event)
    if event.type == INVOICE_PAYMENT_FAILED:
        return _apply_payment_failed(session, event)
    return None


def ensure_can_place_calls(
    session: Session, organization_id: uuid.UUID, now: datetime | None = None
) -> None:
    """Raise PaymentRequired if the organization is suspended, or past due beyond the grace."""
    org = session.get(Organization, organization_id)
    if org is None:
        raise NotFound("organization")
    if org.billing_status == SUSPENDED:
        status = org.subscription_status or "inactive"
        raise PaymentRequired(
            f"billing is suspended (subscription {status}): renew the subscription to place calls"
        )
    if org.billing_status == PAST_DUE and org.past_due_since is not None:
        now = now or datetime.now(UTC)
        if now - org.past_due_since > PAST_DUE_GRACE:
            raise PaymentRequired(
                f"payment is overdue since {org.past_due_since:%Y-%m-%d} and the "
                f"{PAST_DUE_GRACE.days}-day grace period has ended: "
                "update the payment method to place calls"
            )


def _apply_subscription(session: Session, event: StripeEvent) -> uuid.UUID | None:
    subscription = event.object
    org = _named_organization(session, event, _get(subscription, "metadata", "organization_id"))
    if org is None or _is_stale(org, event):
        return None if org is None else org.id
    status = _get(subscription, "status")
    if not isinstance(status, str) or not status:
        _ignore(event, "subscription has no status")
        return org.id
    customer = _customer_id(subscription.get("customer"))
    if customer is not None and customer != org.stripe_customer_id:
        owner = session.scalar(
            select(Organization.id).where(Organization.stripe_customer_id == customer)
        )
        if owner is not None and owner != org.id:
            _ignore(event, f"customer {customer} belongs to another organization")
            return org.id
        org.stripe_customer_id = customer
    org.subscription_status = status[:_STATUS_LENGTH]
    if event.type == SUBSCRIPTION_DELETED:
        org.plan = FREE_PLAN
        _set_billing_status(org, ACTIVE, event.created)
    elif status in _BILLING_STATUS:
        org.plan = _plan_name(subscription)
        _set_billing_status(org, _BILLING_STATUS[status], event.created)
    # else: incomplete (or a status we do not know): billing status and plan stay as they were
    org.billing_updated_at = event.created
    log.info(
        "stripe %s applied: organization %s is %s (subscription %s, plan %s)",
        event.type,
        org.id,
        org.billing_status,
        status,
        org.plan,
        extra={"event_id": event.id, "organization_id": str(org.id)},
    )
    return org.id


def _apply_payment_failed(session: Session, event: StripeEvent) -> uuid.UUID | None:
    invoice = event.object
    named = next(
        (
            value
            for value in (
                _get(invoice, "parent", "subscription_details", "metadata", "organization_id"),
                _get(invoice, "subscription_details", "metadata", "organization_id"),
                _get(invoice, "metadata", "organization_id"),
            )
            if value is not None
        ),
        None,
    )
    if named is not None:
        org = _named_organization(session, event, named)
    else:
        org = _customer_organization(session, event, _customer_id(invoice.get("customer")))
    if org is None or _is_stale(org, event):
        return None if org is None else org.id
    if org.billing_status != SUSPENDED:
        _set_billing_status(org, PAST_DUE, event.created)
    org.billing_updated_at = event.created
    log.info(
        "stripe %s applied: organization %s is %s since %s",
        event.type,
        org.id,
        org.billing_status,
        org.past_due_since,
        extra={"event_id": event.id, "organization_id": str(org.id)},
    )
    return org.id


def _set_billing_status(org: Organization, status: str, at: datetime) -> None:
    """Keep the invariant: past_due_since is set exactly while billing_status is past_due."""
    if status == PAST_DUE:
        if org.billing_status != PAST_DUE or org.past_due_since is None:
            org.past_due_since = at
    else:
        org.past_due_since = None
    org.billing_status = status


def _is_stale(org: Organization, event: StripeEvent) -> bool:
    if org.billing_updated_at is not None and event.created < org.billing_updated_at:
        _ignore(
            event,
            f"created {event.created.isoformat()} is older than the last applied "
            f"billing event ({org.billing_updated_at.isoformat()})",
        )
        return True
    return False


def _named_organization(session: Session, event: StripeEvent, raw: Any) -> Organization | None:
    """The organization metadata.organization_id names, locked for this transaction."""
    if raw is None:
        _ignore(event, "no metadata.organization_id")
        return None
    try:
        organization_id = uuid.UUID(str(raw))
    except ValueError:
        _ignore(event, f"metadata.organization_id {str(raw)[:60]!r} is not a UUID")
        return None
    org = session.get(Organization, organization_id, with_for_update=True, populate_existing=True)
    if org is None:
        _ignore(event, f"organization {organization_id} does not exist")
    return org


def _customer_organization(
    session: Session, event: StripeEvent, customer: str | None
) -> Organization | None:
    if customer is None:
        _ignore(event, "no metadata.organization_id and no customer")
        return None
    org = session.scalars(
        select(Organization)
        .where(Organization.stripe_customer_id == customer)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if org is None:
        _ignore(event, f"no metadata.organization_id and no organization has customer {customer}")
    return org


def _plan_name(subscription: dict[str, Any]) -> str:
    items = _get(subscription, "items", "data")
    first = items[0] if isinstance(items, list) and items else None
    for candidate in (
        _get(first, "price", "lookup_key"),
        _get(first, "price", "nickname"),
        _get(first, "plan", "id"),
        _get(subscription, "plan", "id"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()[:_PLAN_LENGTH]
    return PAID_PLAN


def _customer_id(value: Any) -> str | None:
    """`customer` is an id, or the customer object when expanded."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str) and 0 < len(value) <= _CUSTOMER_LENGTH:
        return value
    return None


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ignore(event: StripeEvent, reason: str) -> None:
    log.warning(
        "stripe %s %s ignored: %s",
        event.type,
        event.id,
        reason,
        extra={"event_id": event.id, "event_type": event.type, "reason": reason},
    )
