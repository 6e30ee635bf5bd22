"""A small threaded HTTP server with scripted responses that records every request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Route = Callable[[Recorded], Reply]


class FakeHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog for a benchmark's worth of clients: the
    default (5) drops connection attempts when a hundred calls dial within seconds, and
    the client's SYN retry (1 s, then 3 s) looks like a provider outage."""

    request_queue_size = 1024
    daemon_threads = True


class HttpFake:
    """`route(method, path, recorded) -> Reply` answers; `fail_next` queues failures first."""

    def __init__(self, route: Callable[[Recorded], Reply], port: int = 0) -> None:
        self.route = route
        self.requests: list[Recorded] = []
        self.failures: list[Reply] = []
        self._lock = threading.Lock()
        self._server = FakeHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HttpFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, *replies: Reply) -> None:
        with self._lock:
            self.failures.extend(replies)

    def received(self, path_part: str = "", method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if path_part in r.path and (method is None or r.method == method)
            ]

    def _answer(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if self.failures:
                return self.failures.pop(0)
        return self.route(recorded)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                recorded = Recorded(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                reply = fake._answer(recorded)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        return Handler
