"""The worker's ops endpoint: /healthz and /metrics on WORKER_METRICS_PORT.

Dramatiq's Prometheus middleware collects the actor metrics; its own exposition server
answers every path with metrics, so this fork serves the two paths ops expect instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dramatiq.middleware.prometheus import Prometheus


class WorkerMetrics(Prometheus):
    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_ops]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b'{"status": "ok"}', "application/json")
        elif self.path == "/metrics":
            from shared.observability.metrics import exposition

            body, content_type = exposition()
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
    server = ThreadingHTTPServer((host, port), _Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
