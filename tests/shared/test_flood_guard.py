"""The media stream's flood rule: more frames than real time allows, not a burst."""

from __future__ import annotations

from web.voice.media import FloodGuard


def feed(guard: FloodGuard, frames: int, at: float) -> bool:
    """Whether any of `frames` arriving at `at` is judged a flood."""
    return any([guard.flooding(at) for _ in range(frames)])


def test_a_call_at_50_frames_a_second_never_floods() -> None:
    guard = FloodGuard(started=0.0)
    assert not any(guard.flooding(i * 0.02) for i in range(50 * 3600))  # an hour


def test_the_backlog_after_a_stall_is_not_a_flood() -> None:
    guard = FloodGuard(started=0.0)
    assert not feed(guard, 250, at=5.0)  # nothing read for 5 s, then all of it at once
    assert not feed(guard, 400, at=8.0)  # and 8 s more, later


def test_far_more_than_real_time_is_a_flood() -> None:
    assert feed(FloodGuard(started=0.0), 2000, at=0.5)
    steady = FloodGuard(started=0.0)  # twice real time: found within the slack's worth
    assert not any(steady.flooding(i * 0.01) for i in range(500))
    assert any(steady.flooding(i * 0.01) for i in range(500, 2000))
