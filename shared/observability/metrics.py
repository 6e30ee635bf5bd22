"""Prometheus metrics: one registry per process, multiprocess-aware under gunicorn.

When PROMETHEUS_MULTIPROC_DIR is set (gunicorn with several workers), each worker writes
its samples there and `/metrics` aggregates them; otherwise the default registry is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests served", ["process", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["process", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

AUTH_CACHE_LOOKUPS = Counter(
    "auth_cache_lookups_total",
    "Credential lookups: hit (cached), miss (read, then cached), bypass (read: not listening)",
    ["result"],
)

# Outbound provider calls, kept by shared.resilience.
PROVIDER_CIRCUIT_STATE = Gauge(
    "provider_circuit_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
    ["provider"],
    # Worst live worker wins; gunicorn's child_exit hook drops the files of dead workers.
    multiprocess_mode="livemax",
)
PROVIDER_REQUESTS = Counter(
    "provider_requests_total",
    "Provider call attempts by outcome (short_circuit: refused by the open breaker)",
    ["provider", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "provider_request_duration_seconds",
    "Duration of one provider call attempt",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def exposition(*extra: Collector) -> tuple[bytes, str]:
    """The current samples in the text format, and its content type.

    `extra` collectors are read at scrape time (e.g. queue depths straight from Redis).
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    if not extra:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    scrape = CollectorRegistry()
    scrape.register(_Forward(registry))
    for collector in extra:
        scrape.register(collector)
    return generate_latest(scrape), CONTENT_TYPE_LATEST


class _Forward(Collector):
    """Lets a per-scrape registry include another registry's samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


# -- the voice loop -------------------------------------------------------------------
_VOICE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5)
VOICE_STT_LATENCY = Histogram(
    "voice_stt_final_latency_seconds",
    "End of caller speech → final transcript",
    buckets=_VOICE_BUCKETS,
)
VOICE_LLM_TTFT = Histogram(
    "voice_llm_ttft_seconds", "LLM request → first token", buckets=_VOICE_BUCKETS
)
VOICE_TTS_TTFA = Histogram(
    "voice_tts_first_audio_seconds", "First text to TTS → first audio back", buckets=_VOICE_BUCKETS
)
VOICE_TO_VOICE = Histogram(
    "voice_to_voice_seconds",
    "End of caller speech → first agent audio frame sent",
    buckets=_VOICE_BUCKETS,
)
VOICE_LOOP_OVERHEAD = Histogram(
    "voice_loop_overhead_seconds",
    "Voice-to-voice minus the provider stages: the loop's own cost",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5),
)
VOICE_INBOUND_FRAME_LAG = Histogram(
    "voice_inbound_frame_lag_seconds",
    "Worst lateness of a caller media frame in one second of a call: when the reader got it, "
    "against its Telnyx timestamp and the call's earliest frame (0: on its 20 ms schedule)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
VOICE_GC_PAUSE = Histogram(
    "voice_gc_pause_seconds",
    "Garbage collections in the voice worker, by how long each held the interpreter: "
    "every call's audio waits meanwhile",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
VOICE_LOOP_LAG = Histogram(
    "voice_event_loop_lag_seconds",
    "How late a 50 ms timer fires in the voice worker: how long any ready greenlet (a "
    "frame that arrived, audio due out) waits for the interpreter",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
VOICE_ACTIVE_CALLS = Gauge("voice_active_calls", "Calls in progress", multiprocess_mode="livesum")
VOICE_BARGE_INS = Counter("voice_barge_ins_total", "Agent audio cut by caller speech")
VOICE_FALLBACKS = Counter(
    "voice_provider_fallbacks_total", "Calls switched to a local provider", ["stage", "provider"]
)
VOICE_REJECTED_STREAMS = Counter(
    "voice_rejected_streams_total", "Media streams refused at connect", ["reason"]
)
VOICE_BAD_FRAMES = Counter("voice_bad_frames_total", "Inbound frames dropped", ["reason"])
VOICE_PLAYOUT_GAPS = Counter(
    "voice_playout_gaps_total",
    "Silences over 40 ms inside an agent turn, by cause: tts (no audio had come yet) or "
    "playout (audio was waiting here)",
    ["cause"],
)
