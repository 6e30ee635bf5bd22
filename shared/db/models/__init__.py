"""Typed SQLAlchemy models. Every tenant-owned row carries `organization_id`."""

from shared.db.models.agents import Agent, KnowledgeEntry, PhoneNumber
from shared.db.models.base import Base
from shared.db.models.calls import Call, CallEvent, CallTurn
from shared.db.models.customers import Customer
from shared.db.models.jobs import JobRun
from shared.db.models.learning import AbTest, AbVariant, Memory, OutcomeStat
from shared.db.models.tenancy import ApiKey, Organization, RefreshToken, User

__all__ = [
    "AbTest",
    "AbVariant",
    "Agent",
    "ApiKey",
    "Base",
    "Call",
    "CallEvent",
    "CallTurn",
    "Customer",
    "JobRun",
    "KnowledgeEntry",
    "Memory",
    "Organization",
    "OutcomeStat",
    "PhoneNumber",
    "RefreshToken",
    "User",
]
