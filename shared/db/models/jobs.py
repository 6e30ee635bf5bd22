"""Ledger of background work already applied, so a redelivered job changes nothing more."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models.base import Base, now_column


class JobRun(Base):
    __tablename__ = "job_runs"

    task: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    done_at: Mapped[datetime] = now_column()
