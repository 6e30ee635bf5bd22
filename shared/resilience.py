"""One resilience layer for every outbound provider call: timeout, retry, circuit breaker.

    guard("hubspot").call(lambda timeout: session.get(url, timeout=timeout).json())

The attempt makes ONE try with the given timeout, with any client library. Transient failures
(network errors, timeouts, HTTP 429 and 5xx) are retried and count toward the provider's
breaker; any other error is re-raised at once. Gives up with `ProviderUnavailable`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import httpx2
import pybreaker
import requests
import urllib3

from shared.observability.metrics import (
    PROVIDER_CIRCUIT_STATE,
    PROVIDER_LATENCY,
    PROVIDER_REQUESTS,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.ProtocolError,
)
# httpx carries groq, deepgram and cartesia; google-genai uses its fork httpx2.
for _httpx in (httpx, httpx2):
    _NETWORK_ERRORS += (_httpx.TimeoutException, _httpx.NetworkError, _httpx.RemoteProtocolError)

_STATE_CODES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


@dataclass(frozen=True)
class Policy:
    """How one provider is called. Times are in seconds."""

    timeout: float = 5.0  # passed to each attempt
    attempts: int = 3  # total tries
    backoff: float = 0.2  # full jitter: uniform(0, min(backoff_cap, backoff * 2**retry))
    backoff_cap: float = 5.0
    max_retry_after: float = 30.0  # a longer Retry-After is not waited for: give up
    fail_max: int = 5  # consecutive transient failures that open the breaker
    reset_timeout: float = 30.0  # open time before one trial call is let through


@dataclass(frozen=True)
class Failure:
    """How an exception from an attempt is classified."""

    transient: bool
    status: int | None = None
    retry_after: float | None = None


class ProviderUnavailable(Exception):
    """The provider's breaker is open or retries ran out; `__cause__` is the last error."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider} unavailable: {reason}")
        self.provider = provider
        self.reason = reason


def classify(exc: BaseException) -> Failure:
    """Transient: network errors, timeouts, HTTP 429 and 5xx, also as an explicit `__cause__`
    (SDKs wrap the transport's error). An HTTP status is read from `.status_code`, `.status`
    or `.response`; anything unrecognised is permanent."""
    seen: BaseException | None = exc
    for _ in range(5):  # a bounded walk: cause chains can be cyclic
        if seen is None:
            break
        status = _status(seen)
        if status is not None:
            transient = status == 429 or status >= 500
            retry_after = _retry_after(seen) if transient else None
            return Failure(transient, status, retry_after)
        if isinstance(seen, _NETWORK_ERRORS):
            return Failure(transient=True)
        seen = seen.__cause__
    return Failure(transient=False)


def parse_retry_after(value: str) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or HTTP-date), or None."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _attr(obj: Any, name: str) -> Any:
    # Some SDK properties raise when unset; classification must never mask the real error.
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _status(exc: BaseException) -> int | None:
    response = _attr(exc, "response")
    for obj, name in ((exc, "status_code"), (exc, "status"), (response, "status_code")):
        value = _attr(obj, name)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _retry_after(exc: BaseException) -> float | None:
    headers = _attr(exc, "headers")
    if headers is None:
        headers = _attr(_attr(exc, "response"), "headers")
    try:  # any mapping-like headers; keys may be in any case
        value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    except Exception:
        return None
    return None if value is None else parse_retry_after(str(value).strip())


def _sleep(seconds: float) -> None:
    # time.sleep looked up per call: gevent may patch it after a guard exists (preloaded apps).
    time.sleep(seconds)


class Guard(pybreaker.CircuitBreakerListener):
    """Retries and a circuit breaker for one provider; get it from `guard()`.

    `sleep` and `random` may be replaced (tests) to observe or skip the waits."""

    def __init__(self, provider: str, policy: Policy) -> None:
        self.provider = provider
        self.policy = policy
        self.sleep: Callable[[float], None] = _sleep
        self.random: Callable[[], float] = random.random
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max,
            reset_timeout=policy.reset_timeout,
            exclude=[lambda exc: not classify(exc).transient],
            listeners=[self],
            name=provider,
            throw_new_error_on_trip=False,
        )
        PROVIDER_CIRCUIT_STATE.labels(provider).set(0)

    def call(self, attempt: Callable[[float], T]) -> T:
        """Run `attempt(timeout)` until it returns, fails permanently (re-raised as is) or
        the provider is deemed unavailable (`ProviderUnavailable`)."""
        retry = 0
        while True:
            try:
                return self._once(attempt)
            except pybreaker.CircuitBreakerError as exc:
                self._count("short_circuit")
                raise ProviderUnavailable(self.provider, "circuit open") from exc
            except Exception as exc:
                failure = classify(exc)
                if not failure.transient:
                    self._count("permanent_error")
                    raise
                delay, reason = self._next_delay(retry, failure)
                if reason:
                    self._count("transient_error")
                    raise ProviderUnavailable(self.provider, reason) from exc
                self._count("retry")
                # The exception's type, not its text: URLs in messages may carry API keys.
                error = failure.status or type(exc).__name__
                log.warning(
                    "provider %s attempt %d failed (%s), retrying in %.2fs",
                    self.provider,
                    retry + 1,
                    error,
                    delay,
                )
                self.sleep(delay)
                retry += 1

    def _once(self, attempt: Callable[[float], T]) -> T:
        # `calling()` rather than `call()`: pybreaker's call() holds the breaker's lock for
        # the whole attempt, which would serialize every request to the provider.
        with self.breaker.calling():
            started = time.perf_counter()
            try:
                result = attempt(self.policy.timeout)
            finally:
                PROVIDER_LATENCY.labels(self.provider).observe(time.perf_counter() - started)
        self._count("ok")
        return result

    def _next_delay(self, retry: int, failure: Failure) -> tuple[float, str | None]:
        """The wait before the next try, or a reason to give up instead."""
        if self.breaker.current_state == pybreaker.STATE_OPEN:
            return 0.0, "circuit open"
        if retry + 1 >= self.policy.attempts:
            return 0.0, f"{self.policy.attempts} attempts failed"
        if failure.retry_after is not None:
            if failure.retry_after > self.policy.max_retry_after:
                return 0.0, f"Retry-After {failure.retry_after:.0f}s is too long"
            return failure.retry_after, None
        ceiling = min(self.policy.backoff_cap, self.policy.backoff * 2**retry)
        return self.random() * ceiling, None

    def _count(self, outcome: str) -> None:
        PROVIDER_REQUESTS.labels(self.provider, outcome).inc()

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        """pybreaker listener: keeps the state gauge current and logs the change."""
        PROVIDER_CIRCUIT_STATE.labels(self.provider).set(_STATE_CODES[new_state.name])
        old = old_state.name if old_state else None
        log.warning("provider %s circuit %s -> %s", self.provider, old, new_state.name)


# Providers on the live call path fail fast (the loop falls back to a local provider);
# background ones (CRM, embeddings, call control) can afford to wait and retry.
LIVE_CALL = Policy(
    timeout=3.0, attempts=2, backoff=0.1, backoff_cap=0.5, max_retry_after=1.0, reset_timeout=15.0
)
POLICIES: dict[str, Policy] = {"deepgram": LIVE_CALL, "cartesia": LIVE_CALL, "groq": LIVE_CALL}

_guards: dict[str, Guard] = {}
_guards_lock = threading.Lock()


def guard(provider: str, policy: Policy | None = None) -> Guard:
    """The process-wide Guard of `provider`, created on first use with `policy` (or the
    defaults). A later, different `policy` for the same provider is a ValueError."""
    with _guards_lock:
        existing = _guards.get(provider)
        if existing is None:
            existing = _guards[provider] = Guard(
                provider, policy or POLICIES.get(provider, Policy())
            )
        elif policy is not None and policy != existing.policy:
            msg = f"guard {provider!r} already exists with {existing.policy}"
            raise ValueError(msg)
        return existing
