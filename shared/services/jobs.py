"""Exactly-once effects for background work: claim (task, key) in the job's own transaction.

If the job fails or its worker dies before commit, the claim vanishes with the rest of
the transaction and the redelivered message does the work; once committed, a redelivery
finds the claim and changes nothing.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import JobRun


def claim(session: Session, task: str, key: str) -> bool:
    """True if this (task, key) had not been done; it now counts as done with the transaction."""
    stmt = insert(JobRun).values(task=task, key=key).on_conflict_do_nothing().returning(JobRun.task)
    return session.scalar(stmt) is not None
