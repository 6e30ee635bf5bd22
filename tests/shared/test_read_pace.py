"""`shared.realtime.pace_reads`: one reply's paced reads must not slow anyone else's (another
reply's first tokens, say), and a pace counts from when it was set."""

from __future__ import annotations

import time

import gevent

from shared.realtime import before_read, pace_reads

PACE_S = 0.05


def reads(count: int, pace: float = 0.0) -> float:
    """Seconds `count` reads take in this greenlet, paced at `pace` (0: not)."""
    pace_reads(pace)
    try:
        started = time.monotonic()
        for _ in range(count):
            before_read()
        return time.monotonic() - started
    finally:
        pace_reads(0)


def test_a_pace_holds_only_the_greenlet_that_set_it() -> None:
    paced = gevent.spawn(reads, 3, PACE_S)
    unpaced = gevent.spawn(reads, 3)
    gevent.joinall([paced, unpaced], raise_error=True)

    # The first read waits too: a pace counts from pace_reads.
    assert paced.value >= 3 * PACE_S * 0.9
    assert unpaced.value < PACE_S / 5


def test_reads_are_free_again_once_the_pace_is_lifted() -> None:
    assert reads(2, PACE_S) >= 2 * PACE_S * 0.9
    assert reads(3) < PACE_S / 5
