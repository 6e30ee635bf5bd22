"""Post-call actors: analysis first, then memory, learning, A/B outcome and CRM sync."""

from __future__ import annotations

import logging
import uuid

from shared.queue.broker import enqueue
from shared.queue.tasks import (
    AFTER_ANALYSIS,
    ANALYZE_CALL,
    LEARN_FROM_CALL,
    RECORD_AB_OUTCOME,
    REMEMBER_CALL,
)
from shared.services import post_call
from workers import runtime
from workers.middleware import db
from workers.registry import actor

log = logging.getLogger(__name__)


@actor(ANALYZE_CALL)
def analyze_call(call_id: str) -> None:
    call = post_call.load(db(), uuid.UUID(call_id))
    if call is None:
        log.warning("analyze_call: no such call", extra={"call_id": call_id})
        return
    post_call.analyze(db(), call)
    # Commit before the follow-ups run: they read what analysis wrote.
    db().commit()
    for task in AFTER_ANALYSIS:
        enqueue(runtime.current().broker, task, call_id)
    log.info("call analysed", extra={"call_id": call_id, "outcome": call.outcome})


@actor(REMEMBER_CALL)
def remember_call(call_id: str) -> None:
    call = post_call.load(db(), uuid.UUID(call_id))
    if call is not None and post_call.remember(db(), call, runtime.current().embeddings):
        log.info("memory stored and embedded", extra={"call_id": call_id})


@actor(LEARN_FROM_CALL)
def learn_from_call(call_id: str) -> None:
    call = post_call.load(db(), uuid.UUID(call_id))
    if call is not None and post_call.learn(db(), call):
        log.info("outcome counted", extra={"call_id": call_id, "outcome": call.outcome})


@actor(RECORD_AB_OUTCOME)
def record_ab_outcome(call_id: str) -> None:
    call = post_call.load(db(), uuid.UUID(call_id))
    if call is not None and post_call.record_ab_outcome(db(), call):
        log.info("A/B outcome recorded", extra={"call_id": call_id})
