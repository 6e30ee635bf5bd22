"""The call status machine of SPEC.md, in one place.

queued → dialing → ringing → in_progress → completed, plus the failure ends reachable
from the states where they can happen. Terminal states have no way out.
"""

from __future__ import annotations

from enum import StrEnum

from shared.errors import InvalidTransition


class CallStatus(StrEnum):
    QUEUED = "queued"
    DIALING = "dialing"
    RINGING = "ringing"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CANCELED = "canceled"


S = CallStatus
TRANSITIONS: dict[CallStatus, frozenset[CallStatus]] = {
    S.QUEUED: frozenset({S.DIALING, S.RINGING, S.IN_PROGRESS, S.FAILED, S.CANCELED}),
    S.DIALING: frozenset({S.RINGING, S.IN_PROGRESS, S.FAILED, S.BUSY, S.NO_ANSWER, S.CANCELED}),
    S.RINGING: frozenset({S.IN_PROGRESS, S.FAILED, S.BUSY, S.NO_ANSWER, S.CANCELED}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED}),
}
TERMINAL = frozenset(s for s in CallStatus if s not in TRANSITIONS)


def can_move(current: str, target: str) -> bool:
    return CallStatus(target) in TRANSITIONS.get(CallStatus(current), frozenset())


def check_transition(current: str, target: str) -> CallStatus:
    """Return the target status, or raise InvalidTransition (409 at the edge)."""
    if current == target:
        return CallStatus(target)
    if not can_move(current, target):
        raise InvalidTransition(f"a call cannot go from {current} to {target}")
    return CallStatus(target)
