"""Builds the Redis broker from settings, with the middleware every actor runs under."""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from shared.config import Settings
from workers.ops_server import WorkerMetrics


def build_broker(settings: Settings) -> RedisBroker:
    middleware = [
        WorkerMetrics(),
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(),
        CurrentMessage(),
    ]
    return RedisBroker(url=settings.require_redis_url(), middleware=middleware)  # type: ignore[no-untyped-call]
