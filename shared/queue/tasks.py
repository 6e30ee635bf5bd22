"""Every background task: its actor name, queue and retry policy, declared once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    actor_name: str
    queue_name: str
    max_retries: int = 10
    min_backoff_ms: int = 1_000
    max_backoff_ms: int = 300_000
    time_limit_ms: int = 60_000


# Call control is on the caller's critical path: short backoff, few retries.
CALL_CONTROL = Task(
    "call_control",
    "telephony",
    max_retries=5,
    min_backoff_ms=200,
    max_backoff_ms=5_000,
    time_limit_ms=30_000,
)
DIAL_CALL = Task(
    "dial_call",
    "telephony",
    max_retries=3,
    min_backoff_ms=500,
    max_backoff_ms=10_000,
    time_limit_ms=30_000,
)
ANALYZE_CALL = Task("analyze_call", "post_call")
REMEMBER_CALL = Task("remember_call", "post_call")
LEARN_FROM_CALL = Task("learn_from_call", "post_call")
RECORD_AB_OUTCOME = Task("record_ab_outcome", "post_call")
SYNC_CALL_TO_CRM = Task(
    "sync_call_to_crm", "crm", max_retries=8, min_backoff_ms=2_000, max_backoff_ms=600_000
)

ALL = (
    CALL_CONTROL,
    DIAL_CALL,
    ANALYZE_CALL,
    REMEMBER_CALL,
    LEARN_FROM_CALL,
    RECORD_AB_OUTCOME,
    SYNC_CALL_TO_CRM,
)
QUEUES = tuple(sorted({task.queue_name for task in ALL}))
# After analysis: the work that reads its summary and outcome.
AFTER_ANALYSIS = (REMEMBER_CALL, LEARN_FROM_CALL, RECORD_AB_OUTCOME, SYNC_CALL_TO_CRM)
