"""shared.resilience against a real local HTTP server that fails on purpose."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from shared.resilience import Guard, Policy, ProviderUnavailable, classify, guard


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FlakyServer:
    """Serves scripted replies per path, in order (the last one repeats), and records each
    request's arrival time."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def script(self, path: str, *replies: Reply) -> str:
        self.scripts[path] = list(replies)
        return self.base + path

    def count(self, path: str) -> int:
        return len(self.requests[path])

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            self.requests[path].append(time.monotonic())
            replies = self.scripts.get(path, [Reply(404)])
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply = server.next_reply(self.path)
                time.sleep(reply.delay)
                body = b'{"ok": true}'
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client of a slow reply has hung up by design


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    flaky = FlakyServer()
    thread = threading.Thread(target=flaky.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield flaky
    flaky.httpd.shutdown()
    flaky.httpd.server_close()


def new_guard(**policy: Any) -> Guard:
    policy.setdefault("backoff", 0.01)
    return guard(f"test-{uuid.uuid4().hex[:8]}", Policy(**policy))


def get(url: str) -> Any:
    def attempt(timeout: float) -> Any:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()

    return attempt


def circuit_state(g: Guard) -> float | None:
    return REGISTRY.get_sample_value("provider_circuit_state", {"provider": g.provider})


def outcomes(g: Guard, outcome: str) -> float:
    labels = {"provider": g.provider, "outcome": outcome}
    return REGISTRY.get_sample_value("provider_requests_total", labels) or 0.0


def resilience_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """This module's lines only: a background thread another test left (an auth-cache
    listener losing its database) may log meanwhile."""
    return [r for r in caplog.records if r.name == "shared.resilience"]


def test_a_503_is_retried_then_succeeds(
    server: FlakyServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.script("/a", Reply(503), Reply(200))
    g = new_guard()
    with caplog.at_level(logging.WARNING, logger="shared.resilience"):
        assert g.call(get(url)) == {"ok": True}
    assert server.count("/a") == 2
    assert (outcomes(g, "retry"), outcomes(g, "ok")) == (1, 1)
    [line] = resilience_records(caplog)
    assert g.provider in line.getMessage() and "503" in line.getMessage()
    assert circuit_state(g) == 0


def test_a_429_waits_for_retry_after_then_succeeds(server: FlakyServer) -> None:
    url = server.script("/a", Reply(429, {"Retry-After": "1"}), Reply(200))
    assert new_guard().call(get(url)) == {"ok": True}
    first, second = server.requests["/a"]
    assert second - first >= 0.9


def test_a_retry_after_as_an_http_date_is_honoured(server: FlakyServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    url = server.script("/a", Reply(503, {"Retry-After": when}), Reply(200))
    g = new_guard()
    waits: list[float] = []
    g.sleep = waits.append
    g.call(get(url))
    [wait] = waits
    assert 8 < wait <= 10


def test_a_retry_after_longer_than_the_cap_gives_up_without_waiting(server: FlakyServer) -> None:
    url = server.script("/a", Reply(429, {"Retry-After": "120"}), Reply(200))
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as raised:
        new_guard(max_retry_after=30).call(get(url))
    assert time.monotonic() - started < 0.5
    assert server.count("/a") == 1
    assert isinstance(raised.value.__cause__, requests.HTTPError)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_client_error_is_raised_at_once_and_never_opens_the_breaker(
    server: FlakyServer, status: int
) -> None:
    url = server.script("/a", Reply(status))
    g = new_guard(fail_max=2)
    for calls in range(1, 6):
        with pytest.raises(requests.HTTPError) as raised:
            g.call(get(url))
        assert raised.value.response is not None
        assert raised.value.response.status_code == status
        assert server.count("/a") == calls
    assert g.breaker.current_state == "closed"
    assert circuit_state(g) == 0
    assert outcomes(g, "permanent_error") == 5


def test_an_unrecognised_exception_is_permanent() -> None:
    calls = []

    def attempt(timeout: float) -> None:
        calls.append(timeout)
        raise ValueError("bad payload")

    with pytest.raises(ValueError, match="bad payload"):
        new_guard(timeout=1.5).call(attempt)
    assert calls == [1.5]


def test_a_refused_connection_is_retried_then_reported_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tries = []

    def attempt(timeout: float) -> None:
        tries.append(1)
        requests.get(f"http://127.0.0.1:{port}/", timeout=timeout)

    with pytest.raises(ProviderUnavailable) as raised:
        new_guard(attempts=3).call(attempt)
    assert len(tries) == 3
    assert isinstance(raised.value.__cause__, requests.ConnectionError)


def test_a_slow_server_times_out_and_is_retried_then_reported_unavailable(
    server: FlakyServer,
) -> None:
    url = server.script("/slow", Reply(200, delay=0.5))
    with pytest.raises(ProviderUnavailable) as raised:
        new_guard(timeout=0.15, attempts=2).call(get(url))
    assert server.count("/slow") == 2
    assert isinstance(raised.value.__cause__, requests.Timeout)


def test_the_breaker_opens_after_fail_max_transient_failures_and_short_circuits(
    server: FlakyServer,
) -> None:
    url = server.script("/a", Reply(503))
    g = new_guard(attempts=2, fail_max=3)
    with pytest.raises(ProviderUnavailable, match="2 attempts failed"):
        g.call(get(url))
    with pytest.raises(ProviderUnavailable, match="circuit open"):
        g.call(get(url))  # the third failure trips the breaker: no second try
    assert server.count("/a") == 3
    with pytest.raises(ProviderUnavailable, match="circuit open"):
        g.call(get(url))
    assert server.count("/a") == 3
    assert circuit_state(g) == 2
    assert outcomes(g, "short_circuit") == 1


def test_the_breaker_closes_after_reset_timeout_on_a_successful_call(
    server: FlakyServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.script("/a", Reply(503), Reply(200))
    g = new_guard(attempts=1, fail_max=1, reset_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="shared.resilience"):
        with pytest.raises(ProviderUnavailable):
            g.call(get(url))
        assert circuit_state(g) == 2
        time.sleep(0.35)
        assert g.call(get(url)) == {"ok": True}
    assert circuit_state(g) == 0
    assert [r.getMessage().rsplit(" ", 3)[1:] for r in resilience_records(caplog)] == [
        ["closed", "->", "open"],
        ["open", "->", "half-open"],
        ["half-open", "->", "closed"],
    ]


def test_separate_providers_have_separate_breakers(server: FlakyServer) -> None:
    broken, healthy = server.script("/broken", Reply(503)), server.script("/ok", Reply(200))
    first, second = new_guard(attempts=1, fail_max=1), new_guard(attempts=1, fail_max=1)
    with pytest.raises(ProviderUnavailable):
        first.call(get(broken))
    assert second.call(get(healthy)) == {"ok": True}
    assert (circuit_state(first), circuit_state(second)) == (2, 0)
    assert guard(first.provider) is first


def test_concurrent_calls_to_one_provider_are_not_serialized(server: FlakyServer) -> None:
    url = server.script("/slow", Reply(200, delay=0.3))
    g = new_guard()
    threads = [threading.Thread(target=g.call, args=(get(url),)) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.count("/slow") == 3
    assert time.monotonic() - started < 0.6


def test_a_guard_is_not_recreated_with_a_different_policy() -> None:
    g = new_guard()
    assert guard(g.provider, g.policy) is g
    with pytest.raises(ValueError, match="already exists"):
        guard(g.provider, Policy(attempts=9))


def test_backoff_is_full_jitter_and_capped(server: FlakyServer) -> None:
    url = server.script("/a", Reply(500))
    g = new_guard(attempts=5, backoff=1.0, backoff_cap=3.0, fail_max=10)
    waits: list[float] = []
    g.sleep, g.random = waits.append, lambda: 0.5
    with pytest.raises(ProviderUnavailable):
        g.call(get(url))
    assert waits == [0.5, 1.0, 1.5, 1.5]


def test_an_httpx_5xx_is_retried_then_succeeds(server: FlakyServer) -> None:
    httpx = pytest.importorskip("httpx")
    url = server.script("/a", Reply(502), Reply(200))

    def attempt(timeout: float) -> Any:
        return httpx.get(url, timeout=timeout).raise_for_status().json()

    assert new_guard().call(attempt) == {"ok": True}
    assert server.count("/a") == 2


class APIStatusError(Exception):
    """Shaped like groq/openai's: the status on the exception, headers on its response."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code
        self.response = SimpleNamespace(headers=headers)


class ApiException(Exception):
    """Shaped like hubspot's: `.status` and `.headers` on the exception."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status
        self.headers = {"Content-Type": "application/json"}


def test_an_sdk_style_429_exception_is_transient() -> None:
    failure = classify(APIStatusError(429, {"retry-after": "0"}))
    assert (failure.transient, failure.status, failure.retry_after) == (True, 429, 0.0)
    errors = [APIStatusError(429, {"retry-after": "0"})]

    def attempt(timeout: float) -> str:
        if errors:
            raise errors.pop()
        return "done"

    g = new_guard()
    waits: list[float] = []
    g.sleep = waits.append
    assert g.call(attempt) == "done"
    assert waits == [0.0]


def test_sdk_style_statuses_and_wrapped_network_errors_are_classified() -> None:
    assert classify(ApiException(503)).transient
    assert not classify(ApiException(401)).transient
    assert not classify(APIStatusError(409, {})).transient
    try:
        raise RuntimeError("connection failed") from requests.ConnectionError("reset")
    except RuntimeError as wrapped:
        assert classify(wrapped).transient
