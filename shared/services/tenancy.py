"""Tenant-scoped lookups: another tenant's row is indistinguishable from a missing one."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.services.principal import Principal

M = TypeVar("M")


def get_owned(
    session: Session,
    model: type[M],
    row_id: uuid.UUID,
    principal: Principal,
    name: str,
    *,
    for_update: bool = False,
) -> M:
    row: Any = session.get(model, row_id, with_for_update=for_update or None)
    if row is None or row.organization_id != principal.organization_id:
        raise NotFound(name)
    return row
