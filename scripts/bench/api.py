"""Benchmark of the REST API's read path, end to end through the real `web` process.

    .venv/bin/python -m scripts.bench.api [--duration 10] [--warmup 2] [--log-levels WARNING]

Starts embedded PostgreSQL + Valkey in their own data dir (.data/bench unless --data-dir;
DATABASE_URL / REDIS_URL are used instead when set), seeds one tenant with
10,000 calls of 6 turns and an API key, starts `web` exactly as the Procfile does, then
drives GET /api/v1/calls/{id}, GET /api/v1/calls?limit=50 and, as a no-database
baseline, GET /healthz from a separate load-generator process at each concurrency.
Everything it started is stopped at the end, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session

from scripts import processes
from scripts.bench import loadgen
from scripts.devstack import ROOT, Endpoints, services
from shared.config import load_settings
from shared.db.engine import make_engine, make_session_factory, session_scope
from shared.db.migrate import upgrade
from shared.db.models import Agent, Customer
from shared.services import api_keys, auth
from shared.services.principal import Principal

DEFAULT_DATA_DIR = ROOT / ".data" / "bench"  # its own servers: never the dev or test data
DATABASE = "switchboard_bench"
DETAIL, LISTING, HEALTHZ = "GET /api/v1/calls/{id}", "GET /api/v1/calls?limit=50", "GET /healthz"
TARGET_P95_MS_AT_1 = 10.0
TARGET_RPS_AT_32 = 1000.0
READY_TIMEOUT_S = 60.0


# --- seeding ---------------------------------------------------------------------------

AGENT_LINES = (
    "Thanks for calling Northwind Dental, this is Ava. How can I help you today?",
    "I can book that for you. Does Tuesday at 10:30 in the morning work?",
    "You're all set for Tuesday at 10:30 with Dr. Patel. You'll get a text reminder.",
    "Our office is open Monday to Friday from eight to six, and Saturdays until noon.",
    "I've noted that your insurance changed; please bring the new card to your visit.",
    "Is there anything else I can help you with? Have a great day!",
)
CALLER_LINES = (
    "Hi, I'd like to schedule a cleaning, sometime next week if possible.",
    "Tuesday morning works, yes. Could it be a bit later, like eleven?",
    "Great, and do you take Delta Dental? I switched plans in January.",
    "Can you also tell me whether parking is free at the new location?",
    "No, that's everything. Thank you so much for your help.",
    "Sorry, I missed that, could you repeat the time please?",
)
OUTCOMES = ("booked", "resolved", "conversation", "callback_requested")
# Every column the post-call pipeline fills is seeded too: the API loads whole rows.
CALL_COLUMNS = (
    "id",
    "organization_id",
    "agent_id",
    "customer_id",
    "direction",
    "from_number",
    "to_number",
    "status",
    "outcome",
    "notes",
    "hangup_cause",
    "telnyx_call_control_id",
    "telnyx_call_session_id",
    "recording_url",
    "machine_detection",
    "summary",
    "analysis",
    "answered_at",
    "ended_at",
    "duration_seconds",
    "created_at",
    "updated_at",
)
TURN_COLUMNS = (
    "id",
    "call_id",
    "seq",
    "speaker",
    "text",
    "started_at",
    "ended_at",
    "interrupted",
    "sentiment",
    "stt_ms",
    "llm_ttft_ms",
    "tts_ttfa_ms",
    "voice_to_voice_ms",
)
OFFICE_NUMBER = "+14155550100"
SUMMARY_CHARS = 600


@dataclass(frozen=True)
class Seeded:
    api_key: str
    call_ids: list[uuid.UUID]


def bench_tenant(session: Session) -> Principal:
    """A new organization and its user, registered through the services."""
    user = auth.register(
        session,
        organization="Northwind Dental",
        email=f"bench-{uuid.uuid4().hex[:8]}@bench.example.com",
        password=secrets.token_urlsafe(16),  # never used: benchmarks use keys or webhooks
    )
    return Principal(organization_id=user.organization_id, user_id=user.id)


def seed(database_url: str, *, calls: int, turns: int) -> Seeded:
    """One tenant (user + API key through the services), its agents, customers, and
    `calls` calls with `turns` turns each through COPY; then ANALYZE."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with session_scope(make_session_factory(engine)) as session:
            who = bench_tenant(session)
            key = api_keys.create(session, who, "bench").key
        call_ids = _seed_calls(engine, who.organization_id, calls, turns)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return Seeded(api_key=key, call_ids=call_ids)


def _seed_calls(engine: Engine, org_id: uuid.UUID, calls: int, turns: int) -> list[uuid.UUID]:
    rng = random.Random(42)
    agents = [uuid.uuid4() for _ in range(5)]
    phones = {uuid.uuid4(): f"+1415{5550200 + i}" for i in range(500)}
    now = datetime.now(UTC)
    call_rows, turn_rows = [], []
    for i in range(calls):
        created = now - timedelta(seconds=i * 259 + rng.randint(0, 200))
        call_id, answered = uuid.uuid4(), created + timedelta(seconds=rng.uniform(2, 12))
        said = list(_turn_rows(rng, call_id, answered, turns))
        call_rows.append(
            _call_row(rng, (call_id, org_id, rng.choice(agents)), phones, created, said)
        )
        turn_rows.extend(said)
    with engine.begin() as conn:
        conn.execute(
            insert(Agent),
            [
                {"id": a, "organization_id": org_id, "name": f"Receptionist {a.hex[:4]}"}
                for a in agents
            ],
        )
        conn.execute(
            insert(Customer),
            [{"id": c, "organization_id": org_id, "phone": p} for c, p in phones.items()],
        )
        pg = conn.connection.driver_connection
        assert pg is not None
        with pg.cursor() as cur:
            for table, columns, rows in (
                ("calls", CALL_COLUMNS, call_rows),
                ("call_turns", TURN_COLUMNS, turn_rows),
            ):
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    return [row[0] for row in call_rows]


def _call_row(
    rng: random.Random,
    ids: tuple[uuid.UUID, uuid.UUID, uuid.UUID],
    phones: dict[uuid.UUID, str],
    created: datetime,
    turns: list[tuple[Any, ...]],
) -> tuple[Any, ...]:
    """A finished call around its turns, with what the post-call analysis writes."""
    call_id, org_id, agent_id = ids
    customer_id = rng.choice(list(phones))
    inbound = rng.random() < 0.7
    completed = rng.random() < 0.9
    answered, ended = turns[0][5], turns[-1][6]
    caller = [t for t in turns if t[3] == "caller"]
    summary = " | ".join(f"{t[3]}: {t[4]}" for t in turns)[:SUMMARY_CHARS]
    analysis = {
        "turns": len(turns),
        "caller_turns": len(caller),
        "interruptions": sum(t[7] for t in turns),
        "sentiment_trajectory": [t[8] for t in caller],
        "average_sentiment": round(sum(t[8] for t in caller) / max(1, len(caller)), 3),
    }
    return (
        call_id,
        org_id,
        agent_id,
        customer_id,
        "inbound" if inbound else "outbound",
        phones[customer_id] if inbound else OFFICE_NUMBER,
        OFFICE_NUMBER if inbound else phones[customer_id],
        "completed" if completed else "failed",
        rng.choice(OUTCOMES) if completed else "failed",
        "Asked for a weekend slot; call back if one frees up." if rng.random() < 0.1 else None,
        "normal_clearing" if completed else "network_error",
        f"v3:{uuid.uuid4().hex}{uuid.uuid4().hex[:12]}",
        str(uuid.uuid4()),
        f"https://recordings.example.com/{call_id}.mp3",
        None if inbound else "human",
        summary,
        Jsonb(analysis),
        answered,
        ended,
        round((ended - answered).total_seconds(), 2),
        created,
        ended,
    )


def _turn_rows(
    rng: random.Random, call_id: uuid.UUID, start: datetime, turns: int
) -> Iterator[tuple[Any, ...]]:
    at = start
    for seq in range(turns):
        agent = seq % 2 == 0
        stt = None if agent else round(rng.uniform(120, 350), 1)
        llm = round(rng.uniform(180, 600), 1) if agent else None
        tts = round(rng.uniform(80, 250), 1) if agent else None
        ended = at + timedelta(seconds=rng.uniform(2, 9))
        yield (
            uuid.uuid4(),
            call_id,
            seq,
            "agent" if agent else "caller",
            rng.choice(AGENT_LINES if agent else CALLER_LINES),
            at,
            ended,
            rng.random() < 0.05,
            None if agent else round(rng.uniform(-0.4, 0.9), 3),
            stt,
            llm,
            tts,
            round(llm + tts + rng.uniform(150, 400), 1) if llm and tts else None,
        )
        at = ended + timedelta(seconds=rng.uniform(0.3, 1.5))


# --- the web process -------------------------------------------------------------------


@dataclass(frozen=True)
class WebServer:
    port: int
    pid: int
    log_path: Path


@contextlib.contextmanager
def web_server(endpoints: Endpoints, data_dir: Path, log_level: str) -> Iterator[WebServer]:
    """The Procfile's `web` process on a free loopback port, stopped (group and all) on exit."""
    port = processes.free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=endpoints.database_url,
        REDIS_URL=endpoints.redis_url,
        DATA_DIR=str(data_dir),
        WEB_PORT=str(port),
        BIND_HOST="127.0.0.1",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL=log_level,
        PATH=processes.venv_path(),
    )
    log_path = data_dir / f"web-{log_level.lower()}.log"
    argv = processes.procfile_argv("web", env["PATH"])
    ready = processes.answers(port)
    with processes.running("web", argv, env, log_path, ready, timeout=READY_TIMEOUT_S) as proc:
        yield WebServer(port=port, pid=proc.pid, log_path=log_path)


# --- measuring -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    endpoint: str
    concurrency: int
    result: loadgen.LoadResult


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _get_json(port: int, path: str, headers: dict[str, str]) -> Any:
    status, body = _get(port, path, headers)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:500]!r}")
    return json.loads(body)


def check_responses(port: int, headers: dict[str, str], seeded: Seeded, turns: int) -> None:
    """Fail early if the endpoints do not answer what the benchmark thinks it measures."""
    detail = _get_json(port, f"/api/v1/calls/{seeded.call_ids[0]}", headers)
    listing = _get_json(port, "/api/v1/calls?limit=50", headers)
    if len(detail["turns"]) != turns or detail["id"] != str(seeded.call_ids[0]):
        raise RuntimeError(f"unexpected call record: {detail}")
    if len(listing["data"]) != 50 or not listing["next_cursor"]:
        raise RuntimeError(f"unexpected call list: {str(listing)[:500]}")


def measure(
    server: WebServer, seeded: Seeded, args: argparse.Namespace, watch: dict[str, int]
) -> list[Row]:
    headers = {"Authorization": f"Bearer {seeded.api_key}"}
    targets = {
        HEALTHZ: ["/healthz"],
        DETAIL: [f"/api/v1/calls/{call_id}" for call_id in seeded.call_ids],
        LISTING: ["/api/v1/calls?limit=50"],
    }
    rows = []
    for concurrency in args.concurrency:
        for endpoint, paths in targets.items():
            background = loadgen.wait_until_quiet(args.quiet_wait)
            print(
                f"  {endpoint} at concurrency {concurrency} (background {background:.0f}%)",
                file=sys.stderr,
                flush=True,
            )
            spec = loadgen.LoadSpec(
                port=server.port,
                paths=paths,
                concurrency=concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                headers=headers,
                watch=watch,
            )
            rows.append(Row(endpoint, concurrency, loadgen.run(spec)))
    return rows


# --- reporting -------------------------------------------------------------------------


def machine_facts(database_url: str) -> list[str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            pg_version = conn.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    return [
        f"nproc           {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()})",
        f"cpu             {model}",
        f"python          {platform.python_version()} ({sys.executable})",
        f"postgresql      {pg_version}",
        f"web workers     {load_settings().web_workers} gevent (WEB_WORKERS)",
    ]


def print_targets(rows: list[Row]) -> None:
    print("\ntargets (calls endpoints): p95 < 10 ms at concurrency 1, > 1,000 req/s at 32")
    for row in rows:
        if row.endpoint == HEALTHZ or row.concurrency not in (1, 32):
            continue
        if row.concurrency == 1:
            ok, figure = row.result.p95_ms < TARGET_P95_MS_AT_1, f"p95 {row.result.p95_ms:.2f} ms"
        else:
            ok, figure = row.result.rps > TARGET_RPS_AT_32, f"{row.result.rps:.0f} req/s"
        verdict = "met" if ok else "MISSED"
        print(f"  {row.endpoint:28} conc {row.concurrency:>2}: {figure:>16}  {verdict}")


def print_log_cost(results: dict[str, list[Row]]) -> None:
    """Each pass against the first: what a more verbose LOG_LEVEL costs per request."""
    (base_level, base), *others = results.items()
    for level, rows in others:
        print(f"\nLOG_LEVEL={level} against {base_level}: web CPU per request, req/s")
        for before, after in zip(base, rows, strict=True):
            cpu = (
                loadgen.cpu_ms_per_request(before.result, "web"),
                loadgen.cpu_ms_per_request(after.result, "web"),
            )
            print(
                f"  {after.endpoint:28} conc {after.concurrency:>2}: "
                f"{cpu[0]:.2f} -> {cpu[1]:.2f} ms ({100 * (cpu[1] / cpu[0] - 1):+.0f}%), "
                f"{before.result.rps:.0f} -> {after.result.rps:.0f} req/s"
            )


# --- main ------------------------------------------------------------------------------


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=6)
    loadgen.add_run_arguments(parser)
    parser.add_argument(
        "--log-levels",
        type=lambda v: [level.strip().upper() for level in v.split(",")],
        default=["WARNING", "INFO"],
        help="one full pass per LOG_LEVEL of the web process (INFO logs every request)",
    )
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    data_dir = args.data_dir.resolve()
    settings = loadgen.bench_settings(data_dir)
    with services(settings, database=DATABASE, fresh=True) as endpoints:
        upgrade(endpoints.database_url)
        facts = machine_facts(endpoints.database_url)
        started = time.monotonic()
        seeded = seed(endpoints.database_url, calls=args.calls, turns=args.turns)
        facts.append(
            f"seeded          {args.calls} calls x {args.turns} turns, one tenant, "
            f"in {time.monotonic() - started:.1f} s (then ANALYZE)"
        )
        postmaster = None if settings.database_url else processes.postmaster_pid(data_dir)
        results = {}
        for level in args.log_levels:
            print(f"web with LOG_LEVEL={level}", file=sys.stderr, flush=True)
            with web_server(endpoints, data_dir, level) as server:
                check_responses(
                    server.port, {"Authorization": f"Bearer {seeded.api_key}"}, seeded, args.turns
                )
                watch = {"web": server.pid} | ({"postgres": postmaster} if postmaster else {})
                results[level] = measure(server, seeded, args, watch)
    print("\n".join(["", "machine", *facts]))
    for level, rows in results.items():
        loadgen.print_table(
            f"LOG_LEVEL={level}, {args.duration:.0f} s per row after {args.warmup:.0f} s warm-up. "
            "cpu% = % of one core over the measured window; machine = all cores together "
            f"(max {len(os.sched_getaffinity(0)) * 100}), other = machine - this benchmark's",
            rows,
            baseline=HEALTHZ,
            trees=("web", "postgres"),
            per_request=("web",),
        )
        print_targets(rows)
    if len(results) > 1:
        print_log_cost(results)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # everything started has been stopped on the way out
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
