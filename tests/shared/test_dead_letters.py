"""Jobs that exhaust their retries land in the dead-letter queue, are counted, and can be retried."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from shared.config import Settings
from shared.queue.broker import build_broker
from shared.queue.dead_letters import list_dead, requeue
from workers.ops_server import QueueDepths


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = build_broker(
        settings.model_copy(
            update={"redis_url": settings.require_redis_url().rstrip("/0123456789") + "/5"}
        )
    )
    broker.client.flushdb()
    yield broker
    broker.client.flushdb()
    broker.close()


def test_a_job_that_keeps_failing_is_dead_lettered_then_retried(broker: RedisBroker) -> None:
    attempts: list[str] = []
    healthy = {"now": False}
    queue = "crm"

    @dramatiq.actor(
        broker=broker, queue_name=queue, actor_name=f"flaky_{uuid.uuid4().hex[:6]}", max_retries=0
    )
    def flaky(value: str) -> None:
        attempts.append(value)
        if not healthy["now"]:
            raise RuntimeError("CRM is down")

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        flaky.send("call-1")
        broker.join(queue, timeout=10_000)
        dead = list_dead(broker, queue)
        assert [letter.message.args for letter in dead] == [("call-1",)]
        depths = {
            m.name: {s.labels["queue"]: s.value for s in m.samples}
            for m in QueueDepths(broker.client).collect()
        }
        assert depths["dramatiq_dead_letters"][queue] == 1

        healthy["now"] = True
        requeue(broker, dead[0])
        broker.join(queue, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert attempts == ["call-1", "call-1"]
    assert list_dead(broker, queue) == []
