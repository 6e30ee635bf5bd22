"""A whole inbound call through the real web app, Redis and a real worker process:
call.initiated → answer with a stream token → answered → hang-up → post-call work.
And a worker killed with SIGKILL mid-job: the job is redelivered, its effect happens once."""

from __future__ import annotations

import threading
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from scripts.fakes.http_fake import HttpFake
from scripts.fakes.telnyx_api import actions
from scripts.fakes.telnyx_events import TelnyxSigner, call_payload, envelope
from shared.config import Settings
from shared.db.models import Call, CallTurn, JobRun, Memory, OutcomeStat
from shared.services import stream_tokens
from tests.api.test_resources import routed_agent
from tests.conftest import register_tenant
from tests.e2e.conftest import WorkerProcess, wait_for

CALLER = "+14155550999"


def _route(web: FlaskClient, number: str) -> str:
    owner = register_tenant(web, f"E2E{uuid.uuid4().hex[:6]}")
    return str(routed_agent(web, owner, number)["id"])


def _deliver(
    web: FlaskClient,
    signer: TelnyxSigner,
    event_type: str,
    payload: dict,
    request_id: str | None = None,
) -> None:
    body = envelope(event_type, payload)
    headers = signer.headers(body)
    if request_id:
        headers["X-Request-ID"] = request_id
    response = web.post("/webhooks/telnyx", data=body, headers=headers)
    assert response.status_code == 200, response.get_json()


def _call(sessions: sessionmaker[Session], ccid: str) -> Call | None:
    with sessions() as session:
        return session.scalar(select(Call).where(Call.telnyx_call_control_id == ccid))


def _speak(sessions: sessionmaker[Session], call_id: uuid.UUID) -> None:
    """What the voice process would have written during the call."""
    now = datetime.now(UTC)
    with sessions() as session, session.begin():
        session.add_all(
            [
                CallTurn(
                    call_id=call_id,
                    seq=0,
                    speaker="agent",
                    text="Hello, thanks for calling!",
                    started_at=now,
                ),
                CallTurn(
                    call_id=call_id,
                    seq=1,
                    speaker="caller",
                    text="When are you open?",
                    started_at=now,
                    sentiment=0.2,
                ),
            ]
        )


def test_inbound_call_runs_end_to_end_through_a_real_worker(
    web: FlaskClient,
    signer: TelnyxSigner,
    fake_telnyx: HttpFake,
    e2e_sessions: sessionmaker[Session],
    e2e_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    number = "+14155550301"
    agent_id = _route(web, number)
    payload = call_payload("v3:e2e-life", from_=CALLER, to=number)

    _deliver(web, signer, "call.initiated", payload, request_id="e2e-request-1")
    answer = wait_for(
        lambda: [a for a in actions(fake_telnyx, "answer") if "e2e-life" in a.path], what="answer"
    )[0]
    call = _call(e2e_sessions, "v3:e2e-life")
    assert call is not None and call.status == "ringing"
    body = answer.json()
    assert (
        body["stream_track"],
        body["stream_bidirectional_mode"],
        body["stream_bidirectional_codec"],
    ) == ("inbound_track", "rtp", "PCMU")
    assert answer.headers["authorization"] == "Bearer KEY-e2e"
    token = parse_qs(urlparse(body["stream_url"]).query)["token"][0]
    assert stream_tokens.redeem(e2e_settings.signing_key, token) == stream_tokens.StreamGrant(
        call.id, call.organization_id
    )

    _deliver(web, signer, "call.answered", payload)
    _speak(e2e_sessions, call.id)
    _deliver(web, signer, "call.hangup", {**payload, "hangup_cause": "normal_clearing"})

    def post_call_done() -> bool:
        with e2e_sessions() as session:
            stored = session.get(Call, call.id)
            memories = session.scalar(
                select(func.count())
                .select_from(Memory)
                .where(Memory.call_id == call.id, Memory.embedding.is_not(None))
            )
            counted = session.scalar(
                select(OutcomeStat.calls).where(OutcomeStat.agent_id == uuid.UUID(agent_id))
            )
            return bool(stored and stored.summary and memories == 1 and counted == 1)

    wait_for(post_call_done, what="post-call work")
    with e2e_sessions() as session:
        stored = session.get(Call, call.id)
        assert (
            stored is not None and stored.status == "completed" and stored.outcome == "conversation"
        )
        assert "When are you open?" in (stored.summary or "")
    # The webhook's request id reappears in the worker's log line for the answer.
    assert any(
        line.get("request_id") == "e2e-request-1" and line["message"] == "call answered"
        for line in worker.log_lines()
    )
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'dramatiq_messages_total{actor_name="analyze_call",queue_name="post_call"}' in metrics
    assert 'dramatiq_queue_depth{queue="post_call"} 0.0' in metrics
    assert "dramatiq_dead_letters" in metrics
    health = urllib.request.urlopen(
        f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=5
    ).read()
    assert b"ok" in health


def test_a_worker_killed_mid_job_is_redelivered_and_the_effect_happens_once(
    web: FlaskClient,
    signer: TelnyxSigner,
    e2e_sessions: sessionmaker[Session],
    e2e_engine,  # type: ignore[no-untyped-def]
    start_worker: Callable[..., WorkerProcess],
) -> None:
    fast_requeue = {"QUEUE_HEARTBEAT_TIMEOUT_MS": "2000", "QUEUE_MAINTENANCE_CHANCE": "1000000"}
    first = start_worker(**fast_requeue)
    number = "+14155550302"
    agent_id = uuid.UUID(_route(web, number))
    with e2e_sessions() as session, session.begin():
        org_id = session.scalar(
            text("SELECT organization_id FROM agents WHERE id = :id"), {"id": agent_id}
        )
        session.add(
            OutcomeStat(agent_id=agent_id, outcome="conversation", organization_id=org_id, calls=5)
        )
    # Hold the statistics row: learn_from_call will block on it, mid-transaction.
    blocker = e2e_engine.connect()
    lock = blocker.begin()
    blocker.execute(
        text("SELECT * FROM outcome_stats WHERE agent_id = :id FOR UPDATE"), {"id": agent_id}
    )
    try:
        payload = call_payload("v3:e2e-kill", from_=CALLER, to=number)
        _deliver(web, signer, "call.initiated", payload)
        _deliver(web, signer, "call.answered", payload)
        call = wait_for(lambda: _call(e2e_sessions, "v3:e2e-kill"), what="call row")
        _speak(e2e_sessions, call.id)
        _deliver(web, signer, "call.hangup", {**payload, "hangup_cause": "normal_clearing"})

        def learner_waiting() -> bool:
            with e2e_engine.connect() as conn:
                return bool(
                    conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%outcome_stats%'"
                        )
                    )
                )

        wait_for(learner_waiting, what="learn_from_call to block on the row lock")
        first.kill()
    finally:
        threading.Thread(target=lambda: (lock.rollback(), blocker.close()), daemon=True).start()

    start_worker(**fast_requeue)

    def counted() -> int | None:
        with e2e_sessions() as session:
            return session.scalar(select(OutcomeStat.calls).where(OutcomeStat.agent_id == agent_id))

    wait_for(lambda: counted() == 6, timeout=30, what="the redelivered job to count the call")
    with e2e_sessions() as session:
        claims = session.scalar(
            select(func.count())
            .select_from(JobRun)
            .where(JobRun.key == str(call.id), JobRun.task == "learn")
        )
    assert claims == 1
    # A second chance to double-count: none taken.
    import time

    time.sleep(2)
    assert counted() == 6
