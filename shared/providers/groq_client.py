"""The Groq SDK client both Groq providers (LLM, sentiment) use, with pools sized for a
voice process.

The SDK's default pool keeps at most 20 idle connections (of 100): with more replies
streaming at once than that, every reply past the 20th closed its connection when done and
the next one opened a new one — a TCP (and, against Groq, TLS) handshake before the first
token, on the voice worker's CPU. The voice benchmark at 100 calls saw ~34 connections
opened and dropped every 7 s. Here every connection opened is kept, up to
`POOL_CONNECTIONS`, above the ≥ 200 calls a voice process aims to carry.

In `SHARDS` pools, not one: httpcore 1.0.9's pool walks every connection it holds, for
each of them again (a count of its connections inside the loop over them), when a request
starts and when its response closes. So a request's CPU grows with the square of the
connections kept: 1.8 ms through a pool of one connection, 3.1 ms with 50 and 13.4 ms with
150 (a gevent process against the Groq fake), every one of them a stretch in which no
call's audio moves. After a burst of replies (every call's first question, say) the pool
keeps that many connections for `KEEPALIVE_S`. httpcore's fix is not released
(encode/httpcore#1035, open).
"""

from __future__ import annotations

import functools
import select
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpcore
import httpx
from gevent import monkey
from groq import DefaultHttpxClient, Groq

from shared.providers.tls import client_context
from shared.realtime import before_read

POOL_CONNECTIONS = 400  # in all, across the shards
SHARDS = 8  # 150 connections after a burst: ~19 a pool, a request's walk ~60 times shorter
KEEPALIVE_S = 30.0  # an idle connection outlives the pauses between a call's replies


def groq_client(api_key: str, base_url: str | None, *, shards: int = SHARDS) -> Groq:
    """A client whose own retries are off: the guard retries, and passes each attempt its
    timeout (`shared.resilience`); 10 s is only the default for a request without one."""
    limits = httpx.Limits(
        max_connections=POOL_CONNECTIONS // shards,
        max_keepalive_connections=POOL_CONNECTIONS // shards,
        keepalive_expiry=KEEPALIVE_S,
    )
    transports = [_transport(limits) for _ in range(shards)]
    transport = transports[0] if shards == 1 else ShardedTransport(transports)
    return Groq(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=10.0,
        http_client=DefaultHttpxClient(transport=transport, event_hooks={"response": [_unbind]}),
    )


def _transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    # The process's one TLS context: a transport builds its own otherwise (~57 ms of CPU).
    transport = httpx.HTTPTransport(verify=client_context(), limits=limits)
    # httpcore has no option for its network backend through httpx: the pool's attribute.
    pool = transport._pool
    pool._network_backend = PlainPollBackend(pool._network_backend)
    return transport


class ShardedTransport(httpx.BaseTransport):
    """Several transports, each with a pool of its own (see the module docstring). A request
    goes to the one with the fewest responses open, the first of equals: a quiet process
    keeps using one connection, a busy one spreads its connections evenly."""

    def __init__(self, transports: Sequence[httpx.BaseTransport]) -> None:
        self.transports = transports
        self._open = [0] * len(transports)  # responses not closed yet, per transport
        self._lock = threading.Lock()  # the worker processes' actors are threads

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            shard = self._open.index(min(self._open))
            self._open[shard] += 1
        try:
            response = self.transports[shard].handle_request(request)
        except BaseException:
            self._closed(shard)
            raise
        response.stream = _Counted(response.stream, functools.partial(self._closed, shard))
        return response

    def _closed(self, shard: int) -> None:
        with self._lock:
            self._open[shard] -= 1

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


class _Counted(httpx.SyncByteStream):
    """A response's body, which tells its transport when it is closed (once)."""

    def __init__(self, inner: Any, on_close: Callable[[], None]) -> None:
        self._inner, self._on_close = inner, on_close
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()
        self._inner.close()


# The stdlib's poll, even where gevent has patched `select` (the voice and web processes).
_poll = monkey.get_original("select", "poll")


class PlainPollBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with its "has the server closed this idle connection?"
    probe done by a plain zero-timeout poll(), and its reads spaced by the reading
    greenlet's pace (`shared.realtime.pace_reads`).

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
        before_read()  # httpcore reads only when h11 has no whole event buffered
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
