"""The voice worker's garbage collector: full collections on its own schedule (when no
call is up, or after a long while), young and middle ones left to the interpreter; every
pause reaches `voice_gc_pause_seconds`, and timing them can never deadlock the process."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from shared.observability.metrics import VOICE_GC_PAUSE
from web.voice.gc_policy import (
    NEVER,
    CallCount,
    FullCollections,
    take_over_full_collections,
    watch_gc_pauses,
)


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


class Cycle:
    """An object that only a collection can free: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector_as_it_was() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()


def calls_up(n: int) -> CallCount:
    calls = CallCount()
    for _ in range(n):
        calls.start()
    return calls


def garbage_cycle() -> weakref.ref[Cycle]:
    """A cycle that lived through a middle collection (so it is in the oldest generation),
    then was dropped: as a call's objects are at its end. Only a full collection frees it."""
    cycle = Cycle()
    gc.collect(1)
    return weakref.ref(cycle)


def test_the_interpreter_runs_young_collections_only(collector_as_it_was: None) -> None:
    take_over_full_collections()
    young, middle, oldest = gc.get_threshold()
    assert (young, middle, oldest) == (700, 3, NEVER)
    assert gc.get_freeze_count() > 0  # what was alive is out of the collector's reach
    for _ in range(20 * young * middle):  # allocations enough for many middle collections
        Cycle()
    assert gc.get_count()[2] > 10  # middle collections past the default oldest threshold


def test_a_full_collection_waits_while_calls_are_up(collector_as_it_was: None) -> None:
    gc.disable()  # only FullCollections collects here
    calls = calls_up(2)
    full = FullCollections(calls, idle_after_s=0.0, at_least_every_s=3600)
    left = garbage_cycle()
    full.check()
    assert left() is not None, "collected with calls up"
    calls.end()
    calls.end()
    full.check()
    assert left() is None, "not collected with no call up"


def test_a_full_collection_runs_after_the_longest_wait_whatever_is_up(
    collector_as_it_was: None,
) -> None:
    gc.disable()
    full = FullCollections(calls_up(200), idle_after_s=0.0, at_least_every_s=0.05)
    left = garbage_cycle()
    full.check()
    assert left() is not None  # the last collection (at start) is not yet 50 ms old
    full.last -= 0.05
    full.check()
    assert left() is None


def test_idle_collections_are_spaced(collector_as_it_was: None) -> None:
    gc.disable()
    full = FullCollections(CallCount(), idle_after_s=60, at_least_every_s=3600)
    left = garbage_cycle()
    full.check()
    assert left() is not None  # idle, but the last collection is under a minute old
    full.last -= 60
    full.check()
    assert left() is None


def test_an_idle_worker_collects_only_after_a_call_or_a_promotion(
    collector_as_it_was: None,
) -> None:
    gc.disable()
    gc.collect()  # nothing has reached the oldest generation since
    calls = CallCount()
    full = FullCollections(calls, idle_after_s=0.0, at_least_every_s=0.0)
    full.check()
    assert full.runs == 0
    calls.start()  # a call came and went: its end may have left cycles
    calls.end()
    full.check()
    assert full.runs == 1
    full.check()
    assert full.runs == 1
    garbage_cycle()  # promoted by a middle collection
    full.check()
    assert full.runs == 2
