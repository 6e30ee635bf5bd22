"""Dead letters: messages that used up their retries, kept by Dramatiq in `<queue>.XQ`
(as they were first enqueued: the failure itself is in the worker's log, by message id).

Listing them and putting them back (with a fresh retry budget) is an operator's job:
`scripts/dead-letters`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    redis_id: str
    message: Message[Any]


def _keys(broker: RedisBroker, queue: str) -> tuple[str, str]:
    base = f"{broker.namespace}:{queue}.XQ"
    return base, f"{base}.msgs"


def list_dead(broker: RedisBroker, queue: str) -> list[DeadLetter]:
    ids_key, msgs_key = _keys(broker, queue)
    letters = []
    client: Any = broker.client  # redis-py's stubs type replies as a union of everything
    for raw_id in client.zrange(ids_key, 0, -1):
        data = client.hget(msgs_key, raw_id)
        if data is not None:
            letters.append(DeadLetter(queue, raw_id.decode(), Message.decode(data)))
    return letters


def requeue(broker: RedisBroker, letter: DeadLetter) -> str:
    """Enqueue the message again with its retry count reset; drop it from the dead letters."""
    spent = ("retries", "traceback", "redis_message_id", "eta")
    options = {k: v for k, v in letter.message.options.items() if k not in spent}
    fresh = dataclasses.replace(letter.message, queue_name=letter.queue, options=options)
    sent = broker.enqueue(fresh)
    ids_key, msgs_key = _keys(broker, letter.queue)
    broker.client.zrem(ids_key, letter.redis_id)
    broker.client.hdel(msgs_key, letter.redis_id)
    return sent.message_id
