"""The voice worker's garbage-collection pauses reach `voice_gc_pause_seconds`, and timing
them can never deadlock the process."""

from __future__ import annotations

import gc
import threading

from prometheus_client import REGISTRY

from shared.observability.metrics import VOICE_GC_PAUSE
from web.voice.runtime import watch_gc_pauses


def observed() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("voice_gc_pause_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("voice_gc_pause_seconds_sum") or 0.0
    return count, total


def full_collection_with_something_to_walk() -> None:
    garbage = [[] for _ in range(50_000)]
    for item in garbage:
        item.append(item)
    del garbage, item
    gc.collect()


def test_each_collection_is_observed_with_its_duration() -> None:
    pauses = watch_gc_pauses(flush_s=3600)  # flushed below, by hand
    try:
        count, total = observed()
        full_collection_with_something_to_walk()
        pauses.flush()
        new_count, new_total = observed()
    finally:
        pauses.close()
    assert new_count >= count + 1
    assert new_total > total  # a real duration, not zero


def test_a_collection_inside_a_metric_update_does_not_wait_for_the_metric() -> None:
    """A collection can start inside prometheus_client's value update, under its lock: the
    gc callback must not observe there (it waited on that lock forever, freezing every call
    in the voice process). Here the histogram is made to block, as that lock would."""
    pauses = watch_gc_pauses(flush_s=3600)
    blocked = threading.Event()
    original = VOICE_GC_PAUSE.observe

    def observe_blocked(value: float, *args: object) -> None:
        blocked.wait()
        original(value, *args)

    count, _ = observed()
    collected = threading.Event()

    def collect() -> None:
        full_collection_with_something_to_walk()
        collected.set()

    VOICE_GC_PAUSE.observe = observe_blocked  # type: ignore[method-assign]
    try:
        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        assert collected.wait(30), "the collection waited on the histogram"
    finally:
        VOICE_GC_PAUSE.observe = original  # type: ignore[method-assign]
        blocked.set()
        pauses.close()  # flushes what it timed
    assert observed()[0] >= count + 1
