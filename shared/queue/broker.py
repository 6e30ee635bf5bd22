"""The Redis broker, built the same way by every process that enqueues or consumes."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from shared.config import Settings
from shared.queue.context import ContextPropagation
from shared.queue.tasks import Task


def build_broker(settings: Settings, extra: list[Middleware] | None = None) -> RedisBroker:
    """A broker on REDIS_URL. `extra` is worker-only middleware (metrics, DB session)."""
    middleware: list[Middleware] = [
        *(extra or []),
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(),
        CurrentMessage(),
        ContextPropagation(),
    ]
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.require_redis_url(),
        middleware=middleware,
        heartbeat_timeout=settings.queue_heartbeat_timeout_ms,
        maintenance_chance=settings.queue_maintenance_chance,
    )


def enqueue(broker: dramatiq.Broker, task: Task, *args: Any, delay_ms: int | None = None) -> str:
    """Send `task` by name (the sender needs no actor object); returns the message id."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=task.queue_name,
        actor_name=task.actor_name,
        args=args,
        kwargs={},
        options={},
    )
    return broker.enqueue(message, delay=delay_ms).message_id
