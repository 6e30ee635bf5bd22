"""Customers: the callers a tenant knows, unique by phone within the tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Customer
from shared.errors import Conflict
from shared.services.pagination import Page, paginate
from shared.services.principal import Principal
from shared.services.tenancy import get_owned


def create(session: Session, principal: Principal, *, phone: str, **fields: Any) -> Customer:
    _ensure_phone_free(session, principal, phone)
    customer = Customer(organization_id=principal.organization_id, phone=phone, **fields)
    session.add(customer)
    session.flush()
    return customer


def get(session: Session, principal: Principal, customer_id: uuid.UUID) -> Customer:
    return get_owned(session, Customer, customer_id, principal, "customer")


def list_customers(
    session: Session, principal: Principal, limit: int, cursor: str | None, phone: str | None = None
) -> Page[Customer]:
    stmt = select(Customer).where(Customer.organization_id == principal.organization_id)
    if phone:
        stmt = stmt.where(Customer.phone == phone)
    return paginate(session, stmt, Customer, limit, cursor)


def update(
    session: Session, principal: Principal, customer_id: uuid.UUID, **changes: Any
) -> Customer:
    customer = get(session, principal, customer_id)
    if "phone" in changes and changes["phone"] != customer.phone:
        _ensure_phone_free(session, principal, changes["phone"])
    for name, value in changes.items():
        setattr(customer, name, value)
    customer.updated_at = datetime.now(UTC)
    session.flush()
    return customer


def delete(session: Session, principal: Principal, customer_id: uuid.UUID) -> None:
    session.delete(get(session, principal, customer_id))


def _ensure_phone_free(session: Session, principal: Principal, phone: str) -> None:
    taken = session.scalar(
        select(Customer.id).where(
            Customer.organization_id == principal.organization_id, Customer.phone == phone
        )
    )
    if taken:
        raise Conflict(f"a customer with phone {phone} already exists")
