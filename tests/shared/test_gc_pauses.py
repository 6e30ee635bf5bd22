"""The voice worker's garbage-collection pauses reach `voice_gc_pause_seconds`."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from web.voice.runtime import watch_gc_pauses


def observed() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("voice_gc_pause_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("voice_gc_pause_seconds_sum") or 0.0
    return count, total


def test_each_collection_is_observed_with_its_duration() -> None:
    callback = watch_gc_pauses()
    try:
        count, total = observed()
        garbage = [[] for _ in range(50_000)]  # a full collection with something to walk
        for item in garbage:
            item.append(item)
        del garbage, item
        gc.collect()
        new_count, new_total = observed()
    finally:
        gc.callbacks.remove(callback)
    assert new_count >= count + 1
    assert new_total > total  # a real duration, not zero
