"""The worker's ops endpoint: /healthz and /metrics on WORKER_METRICS_PORT.

Dramatiq's Prometheus middleware collects the actor metrics (processed, errors, retries,
in progress, durations); its own exposition server answers every path with metrics, so
this fork serves the two paths ops expect, adding queue and dead-letter depths read
from Redis at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from dramatiq.middleware.prometheus import Prometheus
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared.config import load_settings
from shared.observability.metrics import exposition
from shared.queue.tasks import QUEUES


class WorkerMetrics(Prometheus):
    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_ops]


class QueueDepths(Collector):
    """Waiting, delayed and dead-lettered messages per queue, as Dramatiq lays them out."""

    def __init__(self, client: redis.Redis, namespace: str = "dramatiq") -> None:
        self.client = client
        self.namespace = namespace

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily("dramatiq_queue_depth", "Messages waiting", labels=["queue"])
        delayed = GaugeMetricFamily(
            "dramatiq_queue_delayed", "Messages delayed (retry backoff)", labels=["queue"]
        )
        dead = GaugeMetricFamily(
            "dramatiq_dead_letters", "Messages dead-lettered", labels=["queue"]
        )
        pipe = self.client.pipeline(transaction=False)
        for queue in QUEUES:
            key = f"{self.namespace}:{queue}"
            pipe.llen(key)
            pipe.llen(f"{key}.DQ")
            pipe.zcard(f"{key}.XQ")
        counts = pipe.execute()
        for i, queue in enumerate(QUEUES):
            waiting.add_metric([queue], counts[3 * i])
            delayed.add_metric([queue], counts[3 * i + 1])
            dead.add_metric([queue], counts[3 * i + 2])
        return [waiting, delayed, dead]


class _Handler(BaseHTTPRequestHandler):
    queues: QueueDepths

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b'{"status": "ok"}', "application/json")
        elif self.path == "/metrics":
            body, content_type = exposition(self.queues)
            self._send(200, body, content_type)
        else:
            self._send(404, b'{"title": "Not Found"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        pass


def serve_ops() -> int:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["dramatiq_prom_db"]
    host = os.environ.get("dramatiq_prom_host", "127.0.0.1")
    port = int(os.environ.get("dramatiq_prom_port", "9191"))
    _Handler.queues = QueueDepths(
        redis.Redis.from_url(load_settings().require_redis_url(), socket_timeout=2)
    )
    server = ThreadingHTTPServer((host, port), _Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
