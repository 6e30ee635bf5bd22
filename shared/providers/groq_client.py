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

import weakref

import httpx
from groq import DefaultHttpxClient, Groq

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
    return Groq(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=10.0,
        http_client=DefaultHttpxClient(limits=limits, event_hooks={"response": [_unbind]}),
    )


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
