"""Benchmark of POST /webhooks/telnyx through the real `web` process, and of the post-call
pipeline a hang-up starts in a real worker process.

    .venv/bin/python -m scripts.bench.webhooks [--duration 10] [--warmup 2] [--calls 30]

Starts embedded PostgreSQL + Valkey in their own data dir (/tmp/switchboard-bench-webhooks
unless --data-dir; DATABASE_URL / REDIS_URL are used instead when set), migrates, seeds one
tenant with an agent and a phone number, makes an Ed25519 key pair and starts `web` exactly
as the Procfile does with TELNYX_PUBLIC_KEY set and LOG_LEVEL=WARNING. Then:

1. webhooks: signed Telnyx deliveries (unique event ids, a call's life in five events:
   call.initiated to the routed number, call.answered, streaming.started, call.hangup,
   call.cost), signed just before each run, sent once each from a separate load-generator
   process at each concurrency; GET /healthz at the same concurrency is the baseline.
2. post-call: a real worker (`python -m workers.main`, Call Control pointed at a local fake
   Telnyx) and whole calls, one at a time and in bursts: initiated, (answer command),
   answered, turns written as the voice process would, hang-up; then, per call, the time
   from sending the hang-up to all post-call effects being visible in the database.

Everything it started is stopped at the end, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from sqlalchemy import Engine, func, select, text

from scripts import processes
from scripts.bench import loadgen
from scripts.bench.api import (
    AGENT_LINES,
    CALLER_LINES,
    WebServer,
    bench_tenant,
    machine_facts,
    web_server,
)
from scripts.devstack import ROOT, Endpoints, services
from scripts.fakes.http_fake import HttpFake
from scripts.fakes.telnyx_api import start_fake_telnyx
from scripts.fakes.telnyx_events import TelnyxSigner, call_payload, envelope
from shared.config import load_settings
from shared.db.engine import make_engine, make_session_factory, session_scope
from shared.db.migrate import upgrade
from shared.db.models import Agent, Call, CallEvent, CallTurn, OutcomeStat
from shared.services import phone_numbers

DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "switchboard-bench-webhooks"
DATABASE = "switchboard_bench_webhooks"
WEBHOOK_PATH = "/webhooks/telnyx"
WEBHOOK, HEALTHZ = "POST /webhooks/telnyx", "GET /healthz"
OFFICE_NUMBER = "+14155550100"
CALLERS = 2_000  # distinct caller numbers: a caller's first call creates its customer
EVENT_MIX = ("call.initiated", "call.answered", "streaming.started", "call.hangup", "call.cost")
TARGET_P95_MS = 15.0
TARGET_EVENTS_PER_S = 500.0
MAX_WEBHOOKS = 40_000  # per run: bodies, signatures and the JSON spec stay a few tens of MB
WORKER_READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
POST_CALL_TIMEOUT_S = 30.0  # per call: longer means the pipeline is broken, not slow
POLL_S = 0.005  # how often the database is asked whether post-call work is visible
TURNS = 6
# Unset for every process started here: all traffic stays on the loopback interface.
EXTERNAL_CREDENTIALS = (
    "HUBSPOT_ACCESS_TOKEN",
    "GOOGLE_API_KEY",
    "GROQ_API_KEY",
    "DEEPGRAM_API_KEY",
    "CARTESIA_API_KEY",
    "TELNYX_API_KEY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


# --- seeding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    organization_id: uuid.UUID
    agent_id: uuid.UUID
    number: str


def seed(database_url: str) -> Tenant:
    """One tenant (through the services), its agent and the number routed to it."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with session_scope(make_session_factory(engine)) as session:
            who = bench_tenant(session)
            agent = Agent(organization_id=who.organization_id, name="Ava, front desk")
            session.add(agent)
            session.flush()
            phone_numbers.create(session, who, number=OFFICE_NUMBER, agent_id=agent.id)
            return Tenant(who.organization_id, agent.id, OFFICE_NUMBER)
    finally:
        engine.dispose()


def _caller(n: int) -> str:
    return f"+1415{6000000 + n % CALLERS:07d}"


# --- signed deliveries -----------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    body: str
    headers: dict[str, str]
    event_type: str


def event_payload(event_type: str, ccid: str, caller: str, to: str) -> dict[str, Any]:
    """What Telnyx sends for each event type of the mix (the fields the app reads and the
    usual others, so bodies have their real size)."""
    base = call_payload(ccid, from_=caller, to=to)
    now = datetime.now(UTC)
    if event_type == "call.initiated":
        return {**base, "start_time": now.isoformat(), "caller_id_name": "WIRELESS CALLER"}
    if event_type == "call.answered":
        return {**base, "state": "answered", "start_time": now.isoformat()}
    if event_type == "streaming.started":
        return {
            "call_control_id": ccid,
            "call_leg_id": base["call_leg_id"],
            "call_session_id": base["call_session_id"],
            "stream_url": "wss://voice.example.com/media/telnyx?token=abc",
        }
    if event_type == "call.hangup":
        return {
            **base,
            "state": "hangup",
            "hangup_cause": "normal_clearing",
            "hangup_source": "caller",
            "sip_hangup_cause": "200",
            "start_time": (now - timedelta(seconds=95)).isoformat(),
            "end_time": now.isoformat(),
        }
    return {  # call.cost: no handler, recorded and linked to its call
        "call_control_id": ccid,
        "call_leg_id": base["call_leg_id"],
        "call_session_id": base["call_session_id"],
        "billed_duration_secs": 96,
        "total_cost": "0.0096",
        "currency": "USD",
        "status": "valid",
        "cost_parts": [
            {"billed_duration_secs": 96, "call_part": "call-control", "cost": "0.0048"},
            {"billed_duration_secs": 96, "call_part": "media-streaming", "cost": "0.0048"},
        ],
    }


def build_deliveries(
    signer: TelnyxSigner, count: int, tenant: Tenant, tag: str, wave: int
) -> list[Delivery]:
    """`count` signed deliveries (rounded up to whole calls), calls in waves of `wave`:
    each event type for the whole wave before the next type, so with `wave` above twice
    the concurrency a call's previous event has been answered before its next is sent."""
    calls = math.ceil(count / len(EVENT_MIX))
    deliveries = []
    for first in range(0, calls, wave):
        members = range(first, min(calls, first + wave))
        for event_type in EVENT_MIX:
            for n in members:
                payload = event_payload(
                    event_type, f"v3:bench-{tag}-{n}", _caller(n), tenant.number
                )
                body = envelope(event_type, payload)
                headers = signer.headers(body)
                deliveries.append(Delivery(body.decode(), headers, event_type))
    return deliveries


# --- the webhook runs ------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    endpoint: str
    concurrency: int
    result: loadgen.LoadResult
    background: float
    effects: str = ""


@dataclass
class Effects:
    """What the web process stored and queued, to show the run did the work it claims."""

    events: int
    calls: int
    completed: int
    answers_queued: int
    analyses_queued: int

    @classmethod
    def read(cls, engine: Engine, broker_redis: redis.Redis) -> Effects:
        with engine.connect() as conn:
            events = conn.scalar(select(func.count()).select_from(CallEvent)) or 0
            calls = conn.scalar(select(func.count()).select_from(Call)) or 0
            completed = (
                conn.scalar(
                    select(func.count()).select_from(Call).where(Call.status == "completed")
                )
                or 0
            )
        return cls(
            events,
            calls,
            completed,
            int(broker_redis.llen("dramatiq:telephony")),
            int(broker_redis.llen("dramatiq:post_call")),
        )

    def since(self, before: Effects) -> str:
        return (
            f"stored {self.events - before.events} events, created {self.calls - before.calls}"
            f" calls (completed {self.completed - before.completed}); queued "
            f"{self.answers_queued - before.answers_queued} answers, "
            f"{self.analyses_queued - before.analyses_queued} analyses; calls table now "
            f"{self.calls} rows"
        )


def measure_webhooks(
    server: WebServer,
    signer: TelnyxSigner,
    tenant: Tenant,
    args: argparse.Namespace,
    watch: dict[str, int],
    engine: Engine,
    broker_redis: redis.Redis,
) -> list[Row]:
    rows = []
    for concurrency in args.concurrency:
        background = loadgen.wait_until_quiet(args.quiet_wait)
        _note(f"{HEALTHZ} at concurrency {concurrency} (background {background:.0f}%)")
        spec = loadgen.LoadSpec(
            port=server.port,
            paths=["/healthz"],
            concurrency=concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            watch=watch,
        )
        healthz = loadgen.run(spec)
        rows.append(Row(HEALTHZ, concurrency, healthz, background))
        # Enough deliveries for the window at the baseline's rate, which no webhook beats.
        wanted = healthz.rps * (args.warmup + args.duration) * args.events_factor
        count = int(min(MAX_WEBHOOKS, max(2_000, wanted)))
        tag = f"c{concurrency}-{uuid.uuid4().hex[:6]}"
        wave = max(64, 2 * concurrency)
        background = loadgen.wait_until_quiet(args.quiet_wait)
        started = time.monotonic()
        deliveries = build_deliveries(signer, count, tenant, tag, wave)
        _note(
            f"{WEBHOOK} at concurrency {concurrency}: {len(deliveries)} deliveries signed in "
            f"{time.monotonic() - started:.1f} s (background {background:.0f}%)"
        )
        before = Effects.read(engine, broker_redis)
        spec = loadgen.LoadSpec(
            port=server.port,
            paths=[WEBHOOK_PATH] * len(deliveries),
            concurrency=concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            watch=watch,
            method="POST",
            bodies=[d.body for d in deliveries],
            request_headers=[d.headers for d in deliveries],
            once=True,
        )
        result = loadgen.run(spec)
        effects = Effects.read(engine, broker_redis).since(before)
        rows.append(Row(WEBHOOK, concurrency, result, background, effects))
    return rows


# --- the worker and the post-call runs -------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def log_lines(self) -> list[dict[str, Any]]:
        return processes.json_log_lines(self.log_path)

    def actor_durations(self) -> dict[str, tuple[float, float]]:
        """actor -> (sum ms, count) of Dramatiq's processing-time histogram, so far."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        totals: dict[str, list[float]] = {}
        for line in body.splitlines():
            kind = re.match(r"dramatiq_message_duration_milliseconds_(sum|count)\{", line)
            actor = re.search(r'actor_name="(\w+)"', line)
            if kind and actor:
                entry = totals.setdefault(actor[1], [0.0, 0.0])
                entry[0 if kind[1] == "sum" else 1] += float(line.rsplit(" ", 1)[1])
        return {actor: (s, c) for actor, (s, c) in totals.items()}


@contextlib.contextmanager
def worker_process(endpoints: Endpoints, data_dir: Path, telnyx_api_url: str) -> Iterator[Worker]:
    """`python -m workers.main` as the e2e tests start it; its whole group is stopped on exit."""
    port = processes.free_port()
    # No real provider is reachable: CRM sync is a no-op, embeddings are computed locally,
    # Call Control goes to the local fake.
    env = {name: value for name, value in os.environ.items() if name not in EXTERNAL_CREDENTIALS}
    env.update(
        DATABASE_URL=endpoints.database_url,
        REDIS_URL=endpoints.redis_url,
        DATA_DIR=str(data_dir / "worker"),
        WORKER_METRICS_PORT=str(port),
        TELNYX_API_KEY="KEY-bench",
        TELNYX_API_URL=telnyx_api_url,
        TELNYX_CONNECTION_ID="conn-bench",
        EMBEDDINGS_PROVIDER="local",
        SENTIMENT_PROVIDER="local",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",  # the actors' INFO lines time the queue pickups
        PYTHONPATH=str(ROOT),
    )
    log_path = data_dir / "worker.log"
    with processes.running(
        "worker",
        [sys.executable, "-m", "workers.main"],
        env,
        log_path,
        processes.logged(log_path, "Worker process is ready"),
        timeout=WORKER_READY_TIMEOUT_S,
    ) as proc:
        yield Worker(proc, log_path, port)


@contextlib.contextmanager
def fake_telnyx() -> Iterator[HttpFake]:
    fake = start_fake_telnyx()
    try:
        yield fake
    finally:
        fake.stop()


@dataclass
class Tracked:
    """One call's post-call timeline, in time.monotonic() seconds (wall: time.time())."""

    call_id: uuid.UUID
    request_id: str
    answer_s: float = math.nan  # call.initiated sent -> answer command at (fake) Telnyx
    sent: float = math.nan
    sent_wall: float = math.nan
    acked: float = math.nan
    seen: dict[str, float] = field(default_factory=dict)  # summary / memory / counted

    @property
    def done(self) -> bool:
        return len(self.seen) == 3


class Tracker:
    """Polls the database every POLL_S for the effects of the post-call jobs of the calls
    whose hang-up was sent: the summary, the memory row, the outcome count's job claim
    (committed with the outcome_stats increment)."""

    QUERY = text(
        """
        SELECT c.id, c.summary IS NOT NULL,
               EXISTS (SELECT 1 FROM memories m WHERE m.call_id = c.id),
               EXISTS (SELECT 1 FROM job_runs j WHERE j.task = 'learn' AND j.key = c.id::text)
        FROM calls c WHERE c.id = ANY(:ids)
        """
    )

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pending: dict[uuid.UUID, Tracked] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="post-call-poller", daemon=True)

    def __enter__(self) -> Tracker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def watch(self, tracked: Tracked) -> None:
        with self.lock:
            self.pending[tracked.call_id] = tracked

    def wait(self, calls: list[Tracked], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(c.done for c in calls) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def _poll(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.wait(POLL_S):
                with self.lock:
                    pending = dict(self.pending)
                if not pending:
                    continue
                rows = conn.execute(self.QUERY, {"ids": list(pending)}).all()
                conn.rollback()  # a fresh snapshot next time
                now = time.monotonic()
                for call_id, summary, memory, counted in rows:
                    tracked = pending[call_id]
                    for name, visible in (
                        ("summary", summary),
                        ("memory", memory),
                        ("counted", counted),
                    ):
                        if visible:
                            tracked.seen.setdefault(name, now)
                    if tracked.done:
                        with self.lock:
                            self.pending.pop(call_id, None)


class CallDriver:
    """Plays whole calls against the web process the way Telnyx and the voice process would."""

    def __init__(
        self,
        server: WebServer,
        signer: TelnyxSigner,
        tenant: Tenant,
        engine: Engine,
        telnyx: HttpFake,
    ) -> None:
        self.server, self.signer, self.tenant = server, signer, tenant
        self.sessions = make_session_factory(engine)
        self.telnyx = telnyx

    def deliver(self, event_type: str, payload: dict[str, Any], request_id: str = "") -> float:
        """Sign now, POST, fail unless 200; returns when the answer was read (monotonic)."""
        body = envelope(event_type, payload)
        headers = self.signer.headers(body)
        if request_id:
            headers["X-Request-ID"] = request_id
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=HTTP_TIMEOUT_S)
        try:
            conn.request("POST", WEBHOOK_PATH, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{event_type}: HTTP {response.status}: {answer[:300]!r}")
        return time.monotonic()

    def set_up(self, tag: str, n: int) -> tuple[Tracked, dict[str, Any]]:
        """A call up to its hang-up: ringing, answered (after our answer command reached
        Telnyx), streaming, and TURNS turns said."""
        ccid = f"v3:bench-pc-{tag}-{n}"
        payload = call_payload(ccid, from_=_caller(n), to=self.tenant.number)
        sent = time.monotonic()
        initiated = event_payload("call.initiated", ccid, _caller(n), self.tenant.number)
        self.deliver("call.initiated", initiated)
        answer = self._answer_command(ccid)
        with self.sessions() as session:
            call_id = session.scalar(select(Call.id).where(Call.telnyx_call_control_id == ccid))
        if call_id is None:
            raise RuntimeError(f"call.initiated for {ccid} created no call")
        self.deliver("call.answered", {**payload, "state": "answered"})
        self.deliver("streaming.started", event_payload("streaming.started", ccid, "", ""))
        self._speak(call_id, random.Random(n))
        tracked = Tracked(call_id, f"bench-hangup-{tag}-{n}", answer_s=answer.at - sent)
        return tracked, event_payload("call.hangup", ccid, _caller(n), self.tenant.number)

    def hang_up(self, tracked: Tracked, payload: dict[str, Any], tracker: Tracker) -> None:
        tracked.sent, tracked.sent_wall = time.monotonic(), time.time()
        tracker.watch(tracked)
        tracked.acked = self.deliver("call.hangup", payload, tracked.request_id)

    def _answer_command(self, ccid: str) -> Any:
        deadline = time.monotonic() + HTTP_TIMEOUT_S
        while time.monotonic() < deadline:
            if received := self.telnyx.received(
                f"/calls/{quote(ccid, safe='')}/actions/answer", "POST"
            ):
                return received[0]
            time.sleep(0.002)
        raise RuntimeError(f"no answer command for {ccid}: is the worker running?")

    def _speak(self, call_id: uuid.UUID, rng: random.Random) -> None:
        """What the voice process writes during the call."""
        at = datetime.now(UTC) - timedelta(seconds=60)
        turns = []
        for seq in range(TURNS):
            agent = seq % 2 == 0
            ended = at + timedelta(seconds=rng.uniform(2, 8))
            turns.append(
                CallTurn(
                    call_id=call_id,
                    seq=seq,
                    speaker="agent" if agent else "caller",
                    text=rng.choice(AGENT_LINES if agent else CALLER_LINES),
                    started_at=at,
                    ended_at=ended,
                    sentiment=None if agent else round(rng.uniform(-0.3, 0.9), 3),
                )
            )
            at = ended
        with self.sessions() as session, session.begin():
            session.add_all(turns)


@dataclass(frozen=True)
class PostCallRun:
    mode: str
    calls: list[Tracked]
    durations: dict[str, tuple[float, float]]  # actor -> (sum ms, count) during the run
    log: list[dict[str, Any]]


def measure_post_call(
    driver: CallDriver, worker: Worker, engine: Engine, args: argparse.Namespace
) -> list[PostCallRun]:
    runs = []
    with Tracker(engine) as tracker:
        for mode, batch in (("one at a time", 1), (f"{args.burst} at once", args.burst)):
            background = loadgen.wait_until_quiet(args.quiet_wait)
            _note(f"post-call, {args.calls} calls {mode} (background {background:.0f}%)")
            tag = uuid.uuid4().hex[:6]
            before = worker.actor_durations()
            calls: list[Tracked] = []
            with ThreadPoolExecutor(max_workers=batch) as pool:
                for first in range(0, args.calls, batch):
                    numbers = range(first, min(args.calls, first + batch))
                    ready = list(pool.map(functools.partial(driver.set_up, tag), numbers))
                    time.sleep(0.3)  # let the answer jobs' commits and logs settle
                    gate = threading.Barrier(len(ready))

                    def hang_up(item: tuple[Tracked, dict[str, Any]], gate: Any = gate) -> None:
                        gate.wait(HTTP_TIMEOUT_S)
                        driver.hang_up(*item, tracker)

                    list(pool.map(hang_up, ready))
                    batch_calls = [tracked for tracked, _ in ready]
                    tracker.wait(batch_calls, POST_CALL_TIMEOUT_S)
                    calls.extend(batch_calls)
                    time.sleep(0.2)  # idle queues between bursts, as between real hang-ups
            after = worker.actor_durations()
            durations = {
                actor: (s - before.get(actor, (0.0, 0.0))[0], c - before.get(actor, (0.0, 0.0))[1])
                for actor, (s, c) in after.items()
            }
            runs.append(PostCallRun(mode, calls, durations, worker.log_lines()))
    return runs


# --- reporting -------------------------------------------------------------------------


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))]


def print_webhook_targets(rows: list[Row]) -> None:
    """p95 at concurrency 1, events/s at the highest: in a closed loop of N connections the
    latency is at least N / throughput (Little's law), so p95 < 15 ms at 32 connections
    would take > 2,100 events/s; at 32 the latency shows queueing, not the webhook's cost."""
    print(
        f"\ntargets (webhooks): p95 < {TARGET_P95_MS:.0f} ms per webhook at concurrency 1, "
        f"> {TARGET_EVENTS_PER_S:.0f} events/s at the highest concurrency, no errors"
    )
    webhook_rows = [row for row in rows if row.endpoint == WEBHOOK]
    highest = max((row.concurrency for row in webhook_rows), default=0)
    for row in webhook_rows:
        r = row.result
        checks = [(f"{r.errors} errors", r.errors == 0)]
        if row.concurrency == 1:
            checks.insert(0, (f"p95 {r.p95_ms:.2f} ms", r.p95_ms < TARGET_P95_MS))
        if row.concurrency == highest and highest > 1:
            checks.insert(0, (f"{r.rps:.0f} events/s", r.rps > TARGET_EVENTS_PER_S))
            floor = 1000 * row.concurrency / r.rps if r.rps else math.nan
            checks.append((f"(p95 {r.p95_ms:.0f} ms; Little's law floor {floor:.0f} ms)", True))
        verdicts = ", ".join(
            figure if figure.startswith("(") else f"{figure} {'met' if ok else 'MISSED'}"
            for figure, ok in checks
        )
        print(f"  conc {row.concurrency:>2}: {verdicts}")


def _log_time(line: dict[str, Any]) -> float:
    """A worker log line's time (logging's asctime: local time, millisecond resolution)."""
    stamp = datetime.strptime(str(line["time"]), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def print_post_call(runs: list[PostCallRun], worker_facts: str) -> None:
    print(
        "\npost-call: hang-up sent -> effects visible in the database, per call, ms "
        f"(polled every {POLL_S * 1000:.0f} ms)"
    )
    print(f"  {worker_facts}")
    header = f"  {'run':16} {'calls':>5} {'done':>4} {'stage':34} {'p50':>7} {'p95':>7} {'max':>7}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for run in runs:
        done = sum(c.done for c in run.calls)
        stages: list[tuple[str, Callable[[Tracked], float]]] = [
            ("hang-up acknowledged by web", lambda c: c.acked - c.sent),
            ("summary (analyze_call)", lambda c: c.seen.get("summary", math.nan) - c.sent),
            ("memory row (remember_call)", lambda c: c.seen.get("memory", math.nan) - c.sent),
            ("outcome_stats (learn_from_call)", lambda c: c.seen.get("counted", math.nan) - c.sent),
            (
                "ALL post-call effects",
                lambda c: max(c.seen.values()) - c.sent if c.done else math.nan,
            ),
        ]
        for i, (stage, measure) in enumerate(stages):
            values = [1000 * measure(c) for c in run.calls]
            label = (run.mode, str(len(run.calls)), str(done)) if i == 0 else ("", "", "")
            print(
                f"  {label[0]:16} {label[1]:>5} {label[2]:>4} {stage:34} "
                f"{_percentile(values, 50):>7.1f} {_percentile(values, 95):>7.1f} "
                f"{_percentile(values, 100):>7.1f}"
            )
    print("\n  from the worker's log (its INFO lines carry the hang-up's X-Request-ID), ms:")
    print(f"  {'run':16} {'interval':62} {'p50':>7} {'p95':>7} {'max':>7}")
    for run in runs:
        for i, (interval, values) in enumerate(_log_intervals(run)):
            print(
                f"  {run.mode if i == 0 else '':16} {interval:62} {_percentile(values, 50):>7.1f} "
                f"{_percentile(values, 95):>7.1f} {_percentile(values, 100):>7.1f}"
            )
    print("\n  worker processing time per job (Dramatiq's histogram), mean ms:")
    for run in runs:
        means = ", ".join(
            f"{actor} {s / c:.1f} ({c:.0f})" for actor, (s, c) in sorted(run.durations.items()) if c
        )
        print(f"  {run.mode:16} {means}")
    print(
        "\n  call.initiated sent -> answer command at (fake) Telnyx, ms (the caller hears ringing):"
    )
    for run in runs:
        answers = [1000 * c.answer_s for c in run.calls]
        print(
            f"  {run.mode:16} p50 {_percentile(answers, 50):.1f}, p95 "
            f"{_percentile(answers, 95):.1f}, max {_percentile(answers, 100):.1f}"
        )
    print("  CRM sync: HUBSPOT_ACCESS_TOKEN unset, so sync_call_to_crm only logs and returns")


# Worker log lines (by how their message starts) that mark a post-call job's progress.
LOG_MARKS = {
    "analysed": "call analysed",  # analyze_call: after its commit and the follow-ups' enqueue
    "crm": "CRM not configured",  # sync_call_to_crm: its first statement, so its start
    "memory": "memory stored",  # remember_call: stored and embedded (before its commit)
    "counted": "outcome counted",  # learn_from_call (before its commit)
}


def _log_intervals(run: PostCallRun) -> list[tuple[str, list[float]]]:
    """Intervals between the worker's INFO lines of each call's jobs (same clock as ours:
    one machine), found by the hang-up's request id, which the jobs carry."""
    acked = {c.request_id: c.sent_wall + (c.acked - c.sent) for c in run.calls}
    marks: dict[str, dict[str, float]] = {rid: {} for rid in acked}
    for line in run.log:
        times = marks.get(str(line.get("request_id")))
        if times is None:
            continue
        message = str(line.get("message", ""))
        for mark, prefix in LOG_MARKS.items():
            if message.startswith(prefix):
                times.setdefault(mark, _log_time(line))
    rows: list[tuple[str, Callable[[dict[str, float], float], float]]] = [
        ("hang-up acked (analyze_call queued) -> call analysed", lambda t, a: t["analysed"] - a),
        (
            "call analysed -> sync_call_to_crm starts (crm queue pickup)",
            lambda t, a: t["crm"] - t["analysed"],
        ),
        (
            "call analysed -> memory stored+embedded (pickup + job)",
            lambda t, a: t["memory"] - t["analysed"],
        ),
        (
            "call analysed -> outcome counted (pickup + job)",
            lambda t, a: t["counted"] - t["analysed"],
        ),
    ]
    out = []
    for name, interval in rows:
        values = []
        for rid, times in marks.items():
            with contextlib.suppress(KeyError):
                values.append(1000 * interval(times, acked[rid]))
        out.append((name, values))
    return out


# --- main ------------------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set variables for the children started inside (api.web_server copies os.environ)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    loadgen.add_run_arguments(parser)
    parser.add_argument(
        "--events-factor",
        type=float,
        default=0.6,
        help="deliveries signed per run = healthz req/s x (warm-up + duration) x this",
    )
    parser.add_argument("--calls", type=int, default=30, help="post-call: calls per mode")
    parser.add_argument("--burst", type=int, default=10, help="post-call: hang-ups at once")
    parser.add_argument("--skip", choices=["webhooks", "post-call"], action="append", default=[])
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    data_dir = args.data_dir.resolve()
    settings = loadgen.bench_settings(data_dir)
    for name in EXTERNAL_CREDENTIALS:  # no child may reach a real provider
        os.environ.pop(name, None)
    load_at_start = _load()
    signer = TelnyxSigner()
    webhook_rows: list[Row] = []
    post_call_runs: list[PostCallRun] = []
    with contextlib.ExitStack() as stack:
        endpoints = stack.enter_context(services(settings, database=DATABASE, fresh=True))
        upgrade(endpoints.database_url)
        facts = machine_facts(endpoints.database_url)
        tenant = seed(endpoints.database_url)
        engine = make_engine(endpoints.database_url, pool_size=4)
        stack.callback(engine.dispose)
        broker_redis = redis.Redis.from_url(endpoints.redis_url)
        stack.callback(broker_redis.close)
        with _environment(TELNYX_PUBLIC_KEY=signer.public_key):
            server = stack.enter_context(web_server(endpoints, data_dir, "WARNING"))
        watch = {"web": server.pid}
        if not settings.database_url and (postmaster := processes.postmaster_pid(data_dir)):
            watch["postgres"] = postmaster
        if not settings.redis_url:
            watch["valkey"] = int(broker_redis.info("server")["process_id"])
        if "webhooks" not in args.skip:
            webhook_rows = measure_webhooks(
                server, signer, tenant, args, watch, engine, broker_redis
            )
        if "post-call" not in args.skip:
            broker_redis.flushdb()  # the webhook runs' queued jobs are not the worker's to do
            telnyx = stack.enter_context(fake_telnyx())
            worker = stack.enter_context(worker_process(endpoints, data_dir, telnyx.url + "/v2"))
            driver = CallDriver(server, signer, tenant, engine, telnyx)
            post_call_runs = measure_post_call(driver, worker, engine, args)
            with engine.connect() as conn:
                counted = conn.scalar(
                    select(func.sum(OutcomeStat.calls)).where(
                        OutcomeStat.agent_id == tenant.agent_id
                    )
                )
            worker_settings = load_settings()
            worker_facts = (
                f"worker: 1 process x {worker_settings.worker_processes} "
                f"(WORKER_PROCESSES) x {worker_settings.worker_threads} threads (WORKER_THREADS), "
                f"dramatiq_worker_timeout {os.environ.get('dramatiq_worker_timeout', '100')} ms; "
                f"outcome_stats total for the agent: {counted} "
                f"(expected {sum(len(r.calls) for r in post_call_runs)})"
            )
    print("\n".join(["", "machine", *facts]))
    print(f"load average    {load_at_start} at start, {_load()} at end (1, 5, 15 min)")
    print(f"event mix       {', '.join(EVENT_MIX)} (one of each per call, in waves)")
    if webhook_rows:
        loadgen.print_table(
            f"LOG_LEVEL=WARNING, {args.duration:.0f} s per row after {args.warmup:.0f} s "
            "warm-up, every delivery signed and unique. cpu% = % of one core over the measured "
            f"window; machine = all cores (max {len(os.sched_getaffinity(0)) * 100}), "
            "other = machine - this benchmark's processes",
            webhook_rows,
            baseline=HEALTHZ,
            trees=("web", "postgres", "valkey"),
            per_request=("web", "postgres"),
            notes=lambda row: [row.effects] if row.effects else [],
        )
        print_webhook_targets(webhook_rows)
    if post_call_runs:
        print_post_call(post_call_runs, worker_facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
