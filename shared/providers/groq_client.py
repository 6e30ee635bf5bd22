"""The Groq SDK client both Groq providers (LLM, sentiment) use, with a pool sized for a
voice process.

The SDK's default pool keeps at most 20 idle connections (of 100): with more replies
streaming at once than that, every reply past the 20th closed its connection when done and
the next one opened a new one — a TCP (and, against Groq, TLS) handshake before the first
token, on the voice worker's CPU. The voice benchmark at 100 calls saw ~34 connections
opened and dropped every 7 s. Here every connection opened is kept, up to
`POOL_CONNECTIONS`, above the ≥ 200 calls a voice process aims to carry.
"""

from __future__ import annotations

import select
import weakref
from typing import Any

import httpcore
import httpx
from gevent import monkey
from groq import DefaultHttpxClient, Groq

from shared.providers.tls import client_context

POOL_CONNECTIONS = 400
KEEPALIVE_S = 30.0  # an idle connection outlives the pauses between a call's replies


def groq_client(api_key: str, base_url: str | None) -> Groq:
    """A client whose own retries are off: the guard retries, and passes each attempt its
    timeout (`shared.resilience`); 10 s is only the default for a request without one."""
    limits = httpx.Limits(
        max_connections=POOL_CONNECTIONS,
        max_keepalive_connections=POOL_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_S,
    )
    # The process's one TLS context: a transport builds its own otherwise (~57 ms of CPU).
    transport = httpx.HTTPTransport(verify=client_context(), limits=limits)
    # httpcore has no option for its network backend through httpx: the pool's attribute.
    pool = transport._pool
    pool._network_backend = PlainPollBackend(pool._network_backend)
    return Groq(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=10.0,
        http_client=DefaultHttpxClient(transport=transport, event_hooks={"response": [_unbind]}),
    )


# The stdlib's poll, even where gevent has patched `select` (the voice and web processes).
_poll = monkey.get_original("select", "poll")


class PlainPollBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with its "has the server closed this idle connection?"
    probe done by a plain zero-timeout poll().

    Before each request and after each response, httpcore's pool asks every idle connection
    whether its socket is readable (a server that hung up), through `select.poll`. Under
    gevent that is gevent's cooperative poll: ~14 µs against ~0.6 µs, for a call that never
    waits. With the pool this process keeps, that is every idle connection twice per LLM
    reply: ~1 % of the voice worker's CPU at 100 calls, and growing with the square of the
    calls (more replies, more idle connections). Everything else is the inner backend's."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _PlainPollStream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _PlainPollStream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _PlainPollStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _PlainPollStream(self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            sock = self._inner.get_extra_info("socket")
            if sock is None or sock.fileno() == -1:
                return True  # gone: let the pool drop it
            probe = _poll()
            probe.register(sock.fileno(), select.POLLIN)
            return bool(probe.poll(0))
        return self._inner.get_extra_info(info)


def _unbind(response: httpx.Response) -> None:
    """Make the reference from a response's body stream back to the response weak.

    httpx wraps each response's stream in a `BoundSyncStream` that keeps the response, to
    set `response.elapsed` on close: a reference cycle, so a finished request (~60 objects:
    request, response, headers, the pool's request, its events and locks) is freed only by
    the garbage collector, not when the last reference goes. At 100 calls the voice process
    had ~270 finished requests waiting in the young generations at each middle collection,
    a quarter of what that pause walks. httpx has no option for it, hence the private
    attribute; if it goes, this does nothing (and the test of the garbage fails)."""
    stream = response.stream
    if hasattr(stream, "_response") and stream._response is response:
        stream._response = weakref.proxy(response)
