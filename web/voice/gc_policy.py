"""How the voice worker runs CPython's garbage collector: when, and how its pauses are seen.

A collection holds the GIL, so while it runs no call's frames are read and no audio goes
out. CPython 3.11's collector is not incremental: a full collection walks every tracked
object the process keeps, and a voice worker keeps ~500 a call (the provider sockets,
greenlets, locks and events around them): 50-120 ms at 200 calls, every couple of minutes,
each a stall of every call in the process. What those collections find is tiny: at 200
calls one freed ~70 objects (docs/voice-benchmark-log.md); nearly everything a call drops
is freed by reference counting the moment it is dropped. So the worker runs the full
collections itself, when no call is up to wait on them, and the interpreter runs only the
young and middle ones (a few ms each). The cyclic garbage that reaches the oldest
generation meanwhile stays until the next idle moment, or `FULL_AT_LEAST_EVERY_S` at
the latest (one stall then, on a worker that never idles). For memory to stay flat
meanwhile, a hung-up call must leave no reference cycles behind: ~10 objects a call do
(flask-sock's per-connection class), where ~425 did before the cycles were broken
(`CallLoop.close`, `shared/providers/messages.py`, the Cartesia connection, `MediaSocket`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import deque
from typing import Any

from shared.background import start_worker
from shared.observability.metrics import VOICE_GC_PAUSE

log = logging.getLogger(__name__)

NEVER = 2**31 - 1  # the oldest generation's threshold: the interpreter never starts one
FULL_WHEN_IDLE_AFTER_S = 60.0  # a full collection when no call is up, at most this often
FULL_AT_LEAST_EVERY_S = 3600.0  # and with calls up, when it has been this long
CHECK_EVERY_S = 1.0
MIDDLE_THRESHOLD = 3  # young collections per middle one (CPython's default: 10)


def take_over_full_collections() -> None:
    """Move everything alive now (the loaded models: ~160k objects) out of the collector's
    reach for good (`gc.freeze`), and stop the interpreter from starting full collections
    (`run_full_collections` runs them). Young collections keep their threshold (700
    allocations); a middle one runs every 3 young ones, not 10: what a middle collection
    walks is what survived since the last, so it stays short (at 200 calls, 4.5 ms on
    average and 8.8-10.8 ms at longest in a 30 s window, against 7.5-9 ms and up to 22 ms at
    10), for ~0.1 % of a core more. Promoting sooner costs nothing now that no full
    collection waits on the promotions (docs/voice-benchmark-log.md)."""
    gc.collect()
    gc.freeze()
    young, _, _ = gc.get_threshold()
    gc.set_threshold(young, MIDDLE_THRESHOLD, NEVER)


class CallCount:
    """Media streams in progress, and started since the process began."""

    def __init__(self) -> None:
        self.up = 0
        self.started = 0

    def start(self) -> None:
        self.up += 1
        self.started += 1

    def end(self) -> None:
        self.up -= 1


class FullCollections:
    """Runs a full collection when no call is up (and the last was `idle_after_s` ago), or
    when the last was `at_least_every_s` ago whatever is up; either only when there is
    something to find: a call since the last one (its objects, freed as it ended, may have
    left a cycle) or a middle collection (it promotes to the oldest generation)."""

    def __init__(
        self,
        calls: CallCount,
        idle_after_s: float = FULL_WHEN_IDLE_AFTER_S,
        at_least_every_s: float = FULL_AT_LEAST_EVERY_S,
    ) -> None:
        self.calls = calls
        self.idle_after_s = idle_after_s
        self.at_least_every_s = at_least_every_s
        self.last = time.monotonic()
        self.started_then = calls.started
        self.runs = 0
        self._stopped = threading.Event()

    def due(self, now: float) -> bool:
        if self.calls.started == self.started_then and gc.get_count()[2] == 0:
            return False  # an idle worker stays quiet
        since = now - self.last
        if since >= self.at_least_every_s:
            return True
        return since >= self.idle_after_s and self.calls.up == 0

    def check(self) -> None:
        now = time.monotonic()
        if not self.due(now):
            return
        up, self.started_then = self.calls.up, self.calls.started
        freed = gc.collect()
        self.last = time.monotonic()
        self.runs += 1
        log.info(
            "full garbage collection",
            extra={"calls": up, "freed": freed, "ms": round(1000 * (self.last - now), 1)},
        )

    def run_until_closed(self, interval_s: float = CHECK_EVERY_S) -> None:
        while not self._stopped.wait(interval_s):
            self.check()

    def close(self) -> None:
        self._stopped.set()


def run_full_collections(calls: CallCount) -> FullCollections:
    """Take the full collections over from the interpreter, in a background worker."""
    take_over_full_collections()
    full = FullCollections(calls)
    start_worker(full.run_until_closed, "full-collections")
    return full


class GcPauses:
    """Times every collection for `voice_gc_pause_seconds`, and observes the times later,
    in `flush()`, never in the gc callback itself. A collection starts inside whichever
    allocation set it off, which can be inside prometheus_client's update of a value,
    under its non-reentrant lock: observing from the callback then waited on that lock
    forever, and with it every greenlet that touched a metric. The benchmark caught the
    voice process frozen so: every call silent, the worker's CPU at 0."""

    def __init__(self) -> None:
        self._started = 0.0
        # The callback only appends (no lock; a float is not even tracked by the
        # collector); at most a few seconds of pauses wait here for flush().
        self._pauses: deque[float] = deque(maxlen=4096)
        self._stopped = threading.Event()

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append(time.perf_counter() - self._started)

    def flush(self) -> None:
        while True:
            try:  # popleft alone: a flush running beside this one may take the last
                pause = self._pauses.popleft()
            except IndexError:
                return
            VOICE_GC_PAUSE.observe(pause)

    def flush_until_closed(self, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            self.flush()

    def close(self) -> None:
        """Stop timing (the callback leaves `gc.callbacks`) and stop the flushing."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.on_gc)
        self._stopped.set()
        self.flush()


def watch_gc_pauses(flush_s: float = 1.0) -> GcPauses:
    """Time every collection from now on; observed every `flush_s` by a background worker."""
    pauses = GcPauses()
    gc.callbacks.append(pauses.on_gc)
    start_worker(lambda: pauses.flush_until_closed(flush_s), "gc-pauses")
    return pauses
