"""The call status machine."""

from __future__ import annotations

import pytest

from shared.errors import InvalidTransition
from shared.services.call_status import TERMINAL, CallStatus, check_transition


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "dialing"),
        ("dialing", "ringing"),
        ("ringing", "in_progress"),
        ("in_progress", "completed"),
        ("dialing", "busy"),
        ("ringing", "no_answer"),
        ("queued", "canceled"),
        ("in_progress", "failed"),
    ],
)
def test_legal_moves(current: str, target: str) -> None:
    assert check_transition(current, target) == target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("completed", "in_progress"),
        ("in_progress", "ringing"),
        ("in_progress", "busy"),
        ("queued", "completed"),
        ("canceled", "queued"),
        ("no_answer", "completed"),
    ],
)
def test_illegal_moves_raise(current: str, target: str) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, target)


def test_terminal_states_have_no_exit() -> None:
    assert {
        CallStatus.COMPLETED,
        CallStatus.FAILED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.CANCELED,
    } == TERMINAL
    for state in TERMINAL:
        for target in CallStatus:
            if target != state:
                with pytest.raises(InvalidTransition):
                    check_transition(state, target)
