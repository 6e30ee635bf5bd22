"""Placing outbound calls: validation, billing, Idempotency-Key, the queued call row.

Dialing itself happens in the `dial_call` actor, not inline: the API answers at once,
the Telnyx request is retried with backoff if it fails, and the call's `queued` status
is exactly what the status machine expects before `dialing`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import Agent, Call, Customer, PhoneNumber
from shared.errors import Conflict, InvalidInput
from shared.services import billing
from shared.services.call_status import CallStatus
from shared.services.principal import Principal
from shared.services.tenancy import get_owned


@dataclass(frozen=True)
class OutboundRequest:
    agent_id: uuid.UUID
    to: str
    customer_id: uuid.UUID | None = None

    def fingerprint(self) -> str:
        canonical = json.dumps(
            {
                "agent_id": str(self.agent_id),
                "to": self.to,
                "customer_id": str(self.customer_id or ""),
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Placed:
    call: Call
    created: bool  # False: an Idempotency-Key replay of an earlier request


def place(
    session: Session, principal: Principal, request: OutboundRequest, idempotency_key: str | None
) -> Placed:
    if idempotency_key:
        earlier = _replay(session, principal, request, idempotency_key)
        if earlier is not None:
            return Placed(earlier, created=False)
    billing.ensure_can_place_calls(session, principal.organization_id)
    agent = get_owned(session, Agent, request.agent_id, principal, "agent")
    customer_id = _customer(session, principal, request)
    call = Call(
        organization_id=principal.organization_id,
        agent_id=agent.id,
        customer_id=customer_id,
        direction="outbound",
        from_number=_caller_id(session, agent),
        to_number=request.to,
        status=CallStatus.QUEUED,
        idempotency_key=idempotency_key,
        request_fingerprint=request.fingerprint() if idempotency_key else None,
    )
    try:
        with session.begin_nested():
            session.add(call)
    except IntegrityError:  # a concurrent request with the same key won
        earlier = _replay(session, principal, request, idempotency_key or "")
        if earlier is None:
            raise
        return Placed(earlier, created=False)
    return Placed(call, created=True)


def withdraw(session: Session, call_id: uuid.UUID) -> None:
    """Remove a queued call that could not be handed to the queue (nothing was dialed)."""
    session.execute(delete(Call).where(Call.id == call_id, Call.status == CallStatus.QUEUED))


def _replay(
    session: Session, principal: Principal, request: OutboundRequest, key: str
) -> Call | None:
    earlier = session.scalar(
        select(Call).where(
            Call.organization_id == principal.organization_id, Call.idempotency_key == key
        )
    )
    if earlier is not None and earlier.request_fingerprint != request.fingerprint():
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return earlier


def _customer(session: Session, principal: Principal, request: OutboundRequest) -> uuid.UUID:
    if request.customer_id is not None:
        return get_owned(session, Customer, request.customer_id, principal, "customer").id
    existing = session.scalar(
        select(Customer.id).where(
            Customer.organization_id == principal.organization_id, Customer.phone == request.to
        )
    )
    if existing is not None:
        return existing
    customer = Customer(organization_id=principal.organization_id, phone=request.to)
    session.add(customer)
    session.flush()
    return customer.id


def _caller_id(session: Session, agent: Agent) -> str:
    number = session.scalar(
        select(PhoneNumber.number)
        .where(PhoneNumber.agent_id == agent.id)
        .order_by(PhoneNumber.created_at)
        .limit(1)
    )
    if number is None:
        raise InvalidInput(
            "agent_id", "the agent has no phone number to call from: add one under /phone-numbers"
        )
    return number
