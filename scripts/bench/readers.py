"""What the read micro-benchmarks (`media_read`, `provider_read`) share: one greenlet per
connection counting what it receives, and this process's CPU per message over a window."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent


def read_until_closed(
    receive: Callable[[], object], close: Callable[[], None], received: list[int]
) -> None:
    """Count each `receive()` in `received[0]` until it raises (the peer closed: done)."""
    try:
        while True:
            receive()
            received[0] += 1
    except Exception:  # the other end closed the connection
        return
    finally:
        close()


def cpu_us_per_message(received: list[int], settle_s: float, window_s: float) -> float:
    """After `settle_s`, µs of this process's CPU per message counted over `window_s`."""
    gevent.sleep(settle_s)
    messages, cpu = received[0], time.process_time()
    gevent.sleep(window_s)
    messages, cpu = received[0] - messages, time.process_time() - cpu
    return 1e6 * cpu / max(1, messages)
