"""Declares an actor from its Task, so names, queues and retry policies live in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from shared.queue.tasks import Task


def actor(task: Task) -> Callable[[Callable[..., Any]], dramatiq.Actor[Any, Any]]:
    return dramatiq.actor(
        actor_name=task.actor_name,
        queue_name=task.queue_name,
        max_retries=task.max_retries,
        min_backoff=task.min_backoff_ms,
        max_backoff=task.max_backoff_ms,
        time_limit=task.time_limit_ms,
    )
