"""Benchmark of the `voice` process: loop overhead per turn, calls per process, local models.

    .venv/bin/python -m scripts.bench.voice [a|b|c|all] [--steps 50,100,...] [--window 20]

Starts embedded PostgreSQL + Valkey in their own data dir (.data/vbench unless --data-dir),
seeds one tenant, agent, number and the calls directly, and starts the real `voice` process
(gunicorn, one gevent worker) as the Procfile does. The fake Deepgram, Cartesia and Groq
servers run in processes of their own, so their CPU is not the voice process's; the phones
(scripts/fakes FakeTelnyxCall on one shared MediaLoop) run here. With --pin (the default,
on 2+ cores) the voice worker has the last core to itself and all the rest share the others.

(a) Loop overhead: providers of fixed latency (Deepgram replies `--stt-ms` after the audio
    that triggers them, Groq's first token at `--llm-ttft-ms` then one every
    `--llm-token-ms`, Cartesia's first audio at `--tts-ms`); a few calls ask questions in
    turn. Voice-to-voice and its parts from the stored call_turns, less the providers' known
    time, and the loop's own `voice_loop_overhead_seconds`.
(b) Calls per process: a ramp of simultaneous calls, each on an open line, asking a question
    whenever the agent is quiet and interrupting one answer per measured window. Per step:
    inbound frame lag (`voice_inbound_frame_lag_seconds`), agent-audio underruns and clear
    latency at the phone, voice worker CPU. Then the baseline: the reference's naive
    flask-sock relay (scripts/bench/relay.py) on the same core at `--relay-streams` open
    lines, a call's CPU against a relay stream's. Then a py-spy profile (`--profile-calls`),
    the worker's CPU per greenlet (`--account-calls`) or by area from perf's native stacks
    (`--perf-calls`, scripts/bench/perf_stacks.py), and the same step at several
    VOICE_CHUNK_MS.
(c) Local providers (Whisper + Silero, local agent, Piper): voice-to-voice on this CPU.

Everything it starts is stopped at the end, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import itertools
import json
import linecache
import math
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psutil
from prometheus_client import multiprocess
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from scripts import processes
from scripts.bench import loadgen, perf_stacks
from scripts.devstack import ROOT, Endpoints, services
from scripts.fakes import deepgram_live
from scripts.fakes.telnyx_media import CallClosed, FakeTelnyxCall, Gap, MediaLoop
from scripts.fakes.telnyx_media_loop import TICK
from shared import native
from shared.config import load_settings
from shared.db.engine import make_engine, make_session_factory, session_scope
from shared.db.migrate import upgrade
from shared.db.models import Agent, Call, CallTurn, KnowledgeEntry, Organization, PhoneNumber
from shared.services import stream_tokens
from shared.voice.sentences import SentenceSplitter

HOOKS = Path(__file__).parent / "worker_hooks"  # loaded into the voice worker by PYTHONPATH
DEFAULT_DATA_DIR = ROOT / ".data" / "vbench"  # its own servers: never the dev or test data
DATABASE = "switchboard_vbench"
QUESTION = (ROOT / "tests" / "providers" / "fixtures" / "caller_when_open.ulaw").read_bytes()
TRANSCRIPT = "When are you open on Saturday?"
ANSWER = "On Saturdays we are open from nine until two. Is there anything else I can help with?"
GREETING = "Hello, thanks for calling Acme Dental."
KNOWLEDGE = (
    (TRANSCRIPT, "On Saturdays we are open from nine in the morning until two in the afternoon."),
    ("Where are you located?", "We are at twelve Harbor Street, next to the old post office."),
)
OFFICE = "+14155550100"
KEYS = {"deepgram": "bench-deepgram", "cartesia": "bench-cartesia", "groq": "bench-groq"}
SILENCE = b"\xff"  # μ-law zero: the open line
BYTES_PER_S = 8000
# The clip starts with silence: speech (and so any barge-in) begins this much later.
ONSET_S = (len(QUESTION) - len(QUESTION.lstrip(SILENCE))) / BYTES_PER_S

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.1  # how often a caller looks at its playout
QUIET_S = 0.3  # agent silent this long: its turn is over
ANSWER_TIMEOUT_S = 15.0
PAUSE_S = (0.3, 1.0)  # caller's pause before the next question
BARGE_AFTER_S = 0.6  # into an answer, the interruption starts
GRACE_S = 2.5  # after a window: interruptions begun in it finish
UNDERRUN_GAP_S = 0.04
LAG_LIMIT_S = 0.02
CLEAR_LIMIT_S = 0.2
CONNECTS_PER_S = 25.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def wait_until_quiet(limit_s: float) -> str:
    """loadgen.wait_until_quiet, as a line for the report."""
    busy = loadgen.wait_until_quiet(limit_s)
    return f"machine busy {busy:.0f}% of a core before the run, {load_line()}"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


# --- provider timing ------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderTimes:
    """The fixed latencies the fake providers answer with, in ms."""

    stt_ms: float = 100.0  # Deepgram: each reply this long after the audio that triggers it
    llm_ttft_ms: float = 150.0  # Groq: first token
    llm_token_ms: float = 10.0  # Groq: then one token every this
    tts_ms: float = 80.0  # Cartesia: first audio of a turn

    def first_sentence_ms(self, text: str = ANSWER) -> float:
        """Groq request → the first sentence complete (the splitter cuts one token late)."""
        from scripts.fakes.groq_llm import split_tokens

        splitter = SentenceSplitter()
        for n, token in enumerate(split_tokens(text), start=1):
            if splitter.feed(token):
                return self.llm_ttft_ms + (n - 1) * self.llm_token_ms
        return self.llm_ttft_ms + (len(split_tokens(text)) - 1) * self.llm_token_ms

    @property
    def total_ms(self) -> float:
        """End of speech → first audio, if the loop took no time at all."""
        return self.stt_ms + self.first_sentence_ms() + self.tts_ms


# --- fake providers, each in a process of its own -------------------------------------


@dataclass
class _Heard:
    """One caller utterance as the fake Deepgram answers it: (audio seconds, message)."""

    replies: list[tuple[float, dict[str, Any]]]

    def due(self, seconds: float) -> list[dict[str, Any]]:
        ready = [message for at, message in self.replies if at <= seconds]
        self.replies = [(at, message) for at, message in self.replies if at > seconds]
        return ready


class _ContentResponder(deepgram_live._Responder):
    """Finds the caller's utterances in the audio itself: the first non-silent byte after
    the previous utterance starts one, which ends `speech_bytes` later. SpeechStarted at the
    start, an interim half-way, the final (speech_final) at the end of speech; each sent
    `latency_ms` after the audio that triggers it has arrived (no endpointing wait on top:
    the provider's time is exactly `latency_ms`). Audio is counted, not kept."""

    fake: ContentDeepgram

    def __init__(self, fake: ContentDeepgram, ws: Any, session: deepgram_live.Session) -> None:
        super().__init__(fake, ws, session)
        self.received = 0
        self.idle_from = 0  # no new utterance before this byte
        self.heard: list[_Heard] = []

    def _audio(self, data: bytes) -> bool:
        start, self.received = self.received, self.received + len(data)
        if start >= self.idle_from and (speech := data.lstrip(SILENCE)):
            onset = self.received - len(speech)
            self.idle_from = onset + self.fake.speech_bytes
            self.heard.append(self._utterance(onset, self.idle_from))
        seconds = self.received / self.bytes_per_s
        for heard in self.heard:
            self._send(heard.due(seconds), delay=True)
        self.heard = [heard for heard in self.heard if heard.replies]
        return True

    def _utterance(self, onset: int, end: int) -> _Heard:
        u = deepgram_live.Utterance(self.fake.transcript, onset / BYTES_PER_S, end / BYTES_PER_S)
        words = u.transcript.split()
        replies: list[tuple[float, dict[str, Any]]] = []
        if self.q.get("vad_events") == "true":
            started = {"type": "SpeechStarted", "channel": [0, 1], "timestamp": u.start_s}
            replies.append((u.start_s, started))
        if self.q.get("interim_results") == "true":
            interim = " ".join(words[: max(1, len(words) // 2)])
            middle = (u.start_s + u.end_s) / 2
            replies.append((middle, self.results(u, interim, is_final=False, speech_final=False)))
        final = self.results(u, u.transcript, is_final=True, speech_final=True)
        replies.append((u.end_s, final))
        return _Heard(replies)


class ContentDeepgram(deepgram_live.DeepgramLiveFake):
    """The Deepgram fake, scripted by what the caller says rather than by a fixed timeline."""

    def __init__(self, api_key: str, latency_ms: float, transcript: str, speech_bytes: int) -> None:
        super().__init__(api_key, latency_ms=latency_ms)
        self.transcript = transcript
        self.speech_bytes = speech_bytes

    async def _handle(self, connection: Any) -> None:
        parts = urlsplit(connection.request.path)
        query = dict(parse_qsl(parts.query))
        session = deepgram_live.Session(parts.path, query, connection.request.headers)
        await _ContentResponder(self, connection, session).run()  # sessions not kept


FakeStarted = tuple[str, Callable[[], None], asyncio.AbstractEventLoop | None]


def _start_fake(kind: str, times: ProviderTimes) -> FakeStarted:
    """Start one fake in this process: the URL the voice process uses, stop, and the event
    loop that serves it (None: the Groq fake, a thread per request)."""
    if kind == "deepgram":
        speech = len(QUESTION.strip(SILENCE))
        deepgram = ContentDeepgram(KEYS[kind], times.stt_ms, TRANSCRIPT, speech).start()
        return deepgram.url, deepgram.stop, deepgram.loop
    if kind == "cartesia":
        from scripts.fakes.cartesia_tts import start_fake_cartesia

        cartesia = start_fake_cartesia(KEYS[kind], latency_ms=times.tts_ms, chunk_ms=100)
        return cartesia.url, cartesia.stop, cartesia.loop
    from scripts.fakes.groq_llm import TextReply, start_fake_groq_llm

    reply = TextReply(
        ANSWER,
        latency_ms=times.llm_ttft_ms - times.llm_token_ms,  # the role chunk; tokens follow
        token_interval_ms=times.llm_token_ms,
    )
    groq = start_fake_groq_llm(KEYS[kind], lambda body: reply)
    return groq.url, groq.stop, None


class LagProbe:
    """How late a fake gets to run: the worst lateness of a 10 ms sleep since last asked,
    on the fake's event loop (its pacing of audio and replies waits there) or, for the
    Groq fake's thread per request, on a thread of its own; and the fake's longest garbage
    collection. Silences and slow clears at the phones are the worker's only if the fakes
    were on time."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self.worst, self.worst_at = 0.0, 0.0  # seconds late, and when (time.time())
        self.worst_gc, self._gc_started = 0.0, 0.0
        gc.callbacks.append(self._on_gc)

    def take(self) -> tuple[float, float, float]:
        taken = self.worst, self.worst_at, self.worst_gc
        self.worst = self.worst_gc = 0.0
        return taken

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.worst_gc = max(self.worst_gc, time.perf_counter() - self._gc_started)

    def _note(self, started: float) -> None:
        late = time.monotonic() - started - self.PERIOD_S
        if late > self.worst:
            self.worst, self.worst_at = late, time.time()

    async def on_loop(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.PERIOD_S)
            self._note(started)

    def on_thread(self) -> None:
        while True:
            started = time.monotonic()
            time.sleep(self.PERIOD_S)
            self._note(started)


def _fake_process(kind: str, times: ProviderTimes, conn: Connection) -> None:
    """A child process: one fake until the parent says stop or goes away; "lag" asks for
    the probe's figure (seconds)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent stops us
    url, stop, loop = _start_fake(kind, times)
    # No full collections in the fakes: they walked what the process imported (this module
    # pulls in SQLAlchemy, the models and the SDKs: ~110k objects, frozen here) and what the
    # fakes record of every call, 65 ms of CPU on this VM and 100-200 ms of the fake's loop
    # when its core was contended: late audio and slow clears charged to the voice process.
    # Young and middle collections still free the short-lived cycles; a run lasts minutes.
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000_000)
    probe = LagProbe()
    probing = None
    if loop is None:
        threading.Thread(target=probe.on_thread, name="lag-probe", daemon=True).start()
    else:
        probing = asyncio.run_coroutine_threadsafe(probe.on_loop(), loop)
    try:
        conn.send(url)
        with contextlib.suppress(EOFError, OSError):
            while conn.recv() == "lag":
                conn.send(probe.take())
    finally:
        if probing is not None:
            probing.cancel()
        stop()


@dataclass(frozen=True)
class Fakes:
    urls: dict[str, str]
    pids: dict[str, int]
    conns: dict[str, Connection]

    def lateness(self) -> dict[str, tuple[float, float, float]]:
        """Each fake's worst lateness (s) since last asked, when, and its longest garbage
        collection (s) (`LagProbe`)."""
        for conn in self.conns.values():
            conn.send("lag")
        return {kind: conn.recv() for kind, conn in self.conns.items()}

    def env(self) -> dict[str, str]:
        """What points the voice process at the fakes."""
        return {
            "DEEPGRAM_API_KEY": KEYS["deepgram"],
            "DEEPGRAM_URL": self.urls["deepgram"],
            "CARTESIA_API_KEY": KEYS["cartesia"],
            "CARTESIA_URL": self.urls["cartesia"],
            "GROQ_API_KEY": KEYS["groq"],
            "GROQ_URL": self.urls["groq"],
            "SENTIMENT_PROVIDER": "local",  # the Groq fake only streams chat replies
        }


@contextlib.contextmanager
def fake_providers(times: ProviderTimes) -> Iterator[Fakes]:
    """The three fakes in spawned processes, stopped (then killed if need be) on exit."""
    ctx = multiprocessing.get_context("spawn")
    started: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    urls, pids, conns = {}, {}, {}
    try:
        for kind in ("deepgram", "cartesia", "groq"):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_fake_process, args=(kind, times, child), name=f"fake-{kind}", daemon=True
            )
            proc.start()
            child.close()
            started.append((proc, parent))
            if not parent.poll(60):
                raise RuntimeError(f"the {kind} fake did not start")
            urls[kind], pids[kind], conns[kind] = parent.recv(), int(proc.pid or 0), parent
        yield Fakes(urls, pids, conns)
    finally:
        for child_proc, parent in started:
            with contextlib.suppress(OSError):
                parent.send("stop")
            child_proc.join(5)
            if child_proc.is_alive():
                child_proc.kill()
                child_proc.join(5)


# --- database --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """A live call the voice process will accept a stream for."""

    call_id: uuid.UUID
    call_control_id: str
    token: str


class Tenant:
    """One organization, agent and number; calls are added as the benchmark needs them."""

    def __init__(self, engine: Engine, secret: str) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = make_session_factory(engine)
        self.secret = secret
        with session_scope(self.sessions) as session:
            org = Organization(name="Acme Dental (bench)")
            session.add(org)
            session.flush()
            agent = Agent(
                organization_id=org.id,
                name="Receptionist",
                persona="You are the friendly receptionist of Acme Dental.",
                greeting=GREETING,
                closing="Thanks for calling, goodbye!",
                language="en",
                knowledge=[
                    KnowledgeEntry(position=n, question=q, answer=a)
                    for n, (q, a) in enumerate(KNOWLEDGE)
                ],
            )
            session.add(agent)
            session.flush()
            session.add(PhoneNumber(organization_id=org.id, number=OFFICE, agent_id=agent.id))
            self.organization_id, self.agent_id = org.id, agent.id

    def calls(self, n: int) -> list[Ticket]:
        """`n` answered inbound calls, in progress, each with its stream token."""
        now = datetime.now(UTC)
        tickets = [
            Ticket(
                call_id,
                f"v3:bench-{uuid.uuid4().hex}",
                stream_tokens.issue(
                    self.secret, stream_tokens.StreamGrant(call_id, self.organization_id)
                ),
            )
            for call_id in (uuid.uuid4() for _ in range(n))
        ]
        rows = [
            {
                "id": ticket.call_id,
                "organization_id": self.organization_id,
                "agent_id": self.agent_id,
                "direction": "inbound",
                "from_number": f"+1415666{i % 10000:04d}",
                "to_number": OFFICE,
                "status": "in_progress",
                "telnyx_call_control_id": ticket.call_control_id,
                "answered_at": now,
            }
            for i, ticket in enumerate(tickets)
        ]
        if rows:  # a repeated ramp step dials none (an empty insert would be one NULL row)
            with self.engine.begin() as conn:
                conn.execute(insert(Call), rows)
        return tickets

    def turns(self, call_ids: Iterable[uuid.UUID]) -> list[CallTurn]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(CallTurn)
                    .where(CallTurn.call_id.in_(list(call_ids)))
                    .order_by(CallTurn.call_id, CallTurn.seq)
                )
            )

    def agent_v2v(self, since: datetime, until: datetime) -> list[float]:
        """Voice-to-voice (ms) of the agent turns that started in [since, until]."""
        with self.sessions() as session:
            return [
                v
                for v in session.scalars(
                    select(CallTurn.voice_to_voice_ms).where(
                        CallTurn.speaker == "agent",
                        CallTurn.voice_to_voice_ms.is_not(None),
                        CallTurn.started_at.between(since, until),
                    )
                )
                if v is not None
            ]


# --- the voice process -----------------------------------------------------------------


@dataclass(frozen=True)
class VoiceServer:
    port: int
    pid: int  # the gunicorn master
    worker: int  # its one gevent worker: every call runs there
    log_path: Path
    metrics_dir: Path  # PROMETHEUS_MULTIPROC_DIR

    def url(self, ticket: Ticket) -> str:
        return f"ws://127.0.0.1:{self.port}/media/telnyx?token={ticket.token}"


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def voice_server(
    ctx: Context, label: str, extra: dict[str, str], *, pinned: bool = True
) -> Iterator[VoiceServer]:
    """The Procfile's `voice` process on a free loopback port; stopped, group and all. With
    `ctx.voice_cpu` (and `pinned`), its worker runs alone on that core, else on all of them
    (not on the load generators' cores only, which it would inherit)."""
    endpoints, data_dir, secret = ctx.endpoints, ctx.data_dir, ctx.secret
    port = processes.free_port()
    path = processes.venv_path()
    voice_data = data_dir / f"voice-{label}"
    metrics_dir = voice_data / "prometheus" / "voice"
    env = {
        **os.environ,
        "DATABASE_URL": endpoints.database_url,
        "REDIS_URL": endpoints.redis_url,
        "DATA_DIR": str(voice_data),
        # The directory gunicorn_common.configure() sets, but set before gunicorn starts:
        # prometheus_client picks its multiprocess mode when first imported, which the
        # config file does before configure() runs; without this /metrics stays empty.
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SECRET_KEY": secret,
        "VOICE_PORT": str(port),
        "BIND_HOST": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
        "LOG_FORMAT": "text",
        "PATH": path,
        "EMBEDDINGS_PROVIDER": "local",
        **{key: "" for key in ("DEEPGRAM_API_KEY", "CARTESIA_API_KEY", "GROQ_API_KEY")},
        **extra,
    }
    if os.environ.get("BENCH_INTERPRETED") == "1":  # the worker hooks' import finder does it
        env["BENCH_INTERPRETED"] = "1"
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{HOOKS}"
    log_path = data_dir / f"voice-{label}.log"
    argv = processes.procfile_argv("voice", path)
    ready = processes.answers(port)
    with processes.running(
        "voice",
        argv,
        env,
        log_path,
        ready,
        timeout=READY_TIMEOUT_S,
        poll=0.5,
        stop_timeout=STOP_TIMEOUT_S,
    ) as proc:
        children = psutil.Process(proc.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one voice worker, found {len(children)}")
        if ctx.voice_cpu is not None:
            pin_threads(children[0].pid, {ctx.voice_cpu} if pinned else ctx.all_cpus)
        yield VoiceServer(port, proc.pid, children[0].pid, log_path, metrics_dir)


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


# --- measuring: Prometheus histograms, CPU --------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram as scraped: cumulative (upper bound, count) pairs."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.count - earlier.count,
        )

    def above(self, bound: float) -> float:
        """Observations above `bound` (a bucket edge)."""
        return self.count - dict(self.buckets).get(bound, self.count)

    def quantile(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear inside the bucket holding rank q*count."""
        if not self.count:
            return math.nan
        rank, lower, below = q * self.count, 0.0, 0.0
        for le, n in self.buckets:
            if n >= rank:
                if math.isinf(le):
                    return lower
                return lower + (le - lower) * (rank - below) / max(n - below, 1e-9)
            lower, below = le, n
        return lower

    def worst_bucket(self) -> str:
        """The highest non-empty bucket, e.g. '<=50ms' (or '>2500ms' past the last edge)."""
        previous, worst, lower = 0.0, "-", 0.0
        for le, n in self.buckets:
            if n > previous:
                worst = f">{1000 * lower:g}ms" if math.isinf(le) else f"<={1000 * le:g}ms"
            previous, lower = n, le if not math.isinf(le) else lower
        return worst


def read_arrivals(hooks: Path) -> dict[str, Histogram]:
    """The worker hooks' frame arrivals so far (scripts/bench/worker_hooks), as cumulative
    histograms: "waits", how long each pump read's data had been in the kernel, and
    "gaps", between two pump rounds."""
    try:
        found = json.loads((hooks / "arrivals.json").read_text())
    except (OSError, ValueError):
        return {"waits": Histogram(), "gaps": Histogram()}
    bounds = [*found["buckets_s"], math.inf]
    histograms = {}
    for name in ("waits", "gaps"):
        cumulative = list(itertools.accumulate(found[name]))
        histograms[name] = Histogram(tuple(zip(bounds, cumulative, strict=True)), cumulative[-1])
    return histograms


def read_collections(hooks: Path) -> list[list[float]]:
    """The worker hooks' garbage collections so far, per generation: [collections, objects
    freed, seconds, longest seconds]."""
    try:
        found: list[list[float]] = json.loads((hooks / "arrivals.json").read_text())["gc"]
    except (OSError, ValueError, KeyError):
        return [[0, 0, 0.0, 0.0] for _ in range(3)]
    return found


def read_long_gaps(hooks: Path) -> list[float]:
    """The worker hooks' pump gaps over 20 ms so far: [count, seconds, seconds its thread
    was on its core, seconds it waited for it in the run queue]."""
    try:
        found: list[float] = json.loads((hooks / "arrivals.json").read_text())["long_gaps"]
    except (OSError, ValueError, KeyError):
        return [0, 0.0, 0.0, 0.0]
    return found


def long_gaps_delta(before: list[float], after: list[float]) -> str:
    """One window's long pump gaps and where the worker's thread was in them."""
    count, gap, on_core, waiting = (a - b for a, b in zip(after, before, strict=True))
    if not count:
        return "none"
    elsewhere = max(0.0, gap - on_core - waiting)
    return (
        f"{count:.0f}, {1000 * gap:.0f} ms in all: its thread on its core {1000 * on_core:.0f} "
        f"ms, waiting for it {1000 * waiting:.0f} ms, neither (the VM, a blocking call) "
        f"{1000 * elsewhere:.0f} ms"
    )


def collections_delta(before: list[list[float]], after: list[list[float]]) -> str:
    """One window's collections, e.g. 'gen0 812 x, 0 freed, 190 ms (max 1.2); ...'. The
    longest is over the run so far (a maximum has no delta)."""
    parts = []
    for generation, (b, a) in enumerate(zip(before, after, strict=True)):
        parts.append(
            f"gen{generation} {a[0] - b[0]:.0f}x freed {a[1] - b[1]:.0f} "
            f"{1000 * (a[2] - b[2]):.0f} ms (longest so far {1000 * a[3]:.1f})"
        )
    return "; ".join(parts)


def scrape(server: VoiceServer) -> dict[str, Any]:
    """Histograms by name and counters (name{labels} → value), read from the worker's
    Prometheus files rather than GET /metrics: serving a scrape stalls the hub for a few ms,
    which would show up as late frames in the window being measured."""
    collector: Any = multiprocess.MultiProcessCollector(None, path=str(server.metrics_dir))  # type: ignore[no-untyped-call]
    found: dict[str, Any] = {}
    for family in collector.collect():
        if family.type == "histogram":
            buckets = [
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket")
            ]
            count = next((s.value for s in family.samples if s.name.endswith("_count")), 0.0)
            found[family.name] = Histogram(tuple(sorted(buckets)), count)
        elif family.type == "counter":
            for s in family.samples:
                if s.name.endswith("_total"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    found[f"{s.name}{{{labels}}}"] = s.value
    return found


def histogram_delta(before: dict[str, Any], after: dict[str, Any], name: str) -> Histogram:
    later: Histogram = after.get(name, Histogram())
    return later.minus(before.get(name, Histogram()))


def counters_delta(before: dict[str, Any], after: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith(prefix) and not isinstance(v, Histogram) and v - before.get(k, 0.0)
    }


class CpuMeter:
    """CPU seconds of named processes and of the whole machine, between two snapshots."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._start = self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        taken = {"wall": time.monotonic()}
        for name, proc in self.processes.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                taken[name] = times.user + times.system
        machine = psutil.cpu_times()
        taken["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        # Time the hypervisor ran someone else on our vCPUs (counted in `machine` too): the
        # VM's speed varies up to 2x by the hour, and this is the part of it Linux sees.
        taken["steal"] = getattr(machine, "steal", 0.0)
        return taken

    def restart(self) -> None:
        self._start = self._snapshot()

    def percent(self) -> dict[str, float]:
        """% of one core since the last (re)start, per name, plus `machine` and `steal`
        (all cores)."""
        now = self._snapshot()
        wall = now["wall"] - self._start["wall"]
        found = {
            name: 100 * (now[name] - self._start.get(name, now[name])) / wall
            for name in now
            if name != "wall"
        }
        found["phones"] = sum(v for k, v in found.items() if k.startswith("phones-"))
        return found

    def rss_mb(self, name: str) -> float:
        with contextlib.suppress(psutil.Error):
            return float(self.processes[name].memory_info().rss) / 2**20
        return math.nan


# --- the phones ------------------------------------------------------------------------


class Windows:
    """Measured windows of the ramp: which step is open, and each call's interruptions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.step: int | None = None
        self._done: set[int] = set()
        self.clears: dict[int, list[float | None]] = {}
        self.skipped: Counter[int] = Counter()

    def open(self, step: int) -> None:
        with self._lock:
            self.step, self._done = step, set()
            self.clears.setdefault(step, [])

    def close(self) -> None:
        with self._lock:
            self.step = None

    def interruption_due(self, caller: int) -> int | None:
        """The open step, if this caller has not interrupted in it yet (it now will)."""
        with self._lock:
            if self.step is None or caller in self._done:
                return None
            self._done.add(caller)
            return self.step

    def record(self, step: int, latency: float | None) -> None:
        with self._lock:
            self.clears[step].append(latency)

    def clears_of(self, step: int) -> list[float | None]:
        with self._lock:
            return list(self.clears.get(step, []))

    def skip(self, step: int) -> None:
        with self._lock:
            self.skipped[step] += 1


class Caller(threading.Thread):
    """One phone: an open line, a question whenever the agent is quiet, and (during a
    measured window) one interruption of an answer. Stops after `turns` questions, or when
    `stop` is set; then hangs up."""

    def __init__(
        self,
        index: int,
        phone: FakeTelnyxCall,
        stop: threading.Event,
        *,
        turns: int | None = None,
        hold: bool = False,
        windows: Windows | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name=f"caller-{index}", daemon=True)
        self.index, self.phone, self.stop = index, phone, stop
        self.turns, self.hold, self.windows = turns, hold, windows
        self.rng = random.Random(seed)
        self.asked = self.unanswered = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.phone.start_line()
            if self._until(self._audible, ANSWER_TIMEOUT_S):  # the greeting
                self._until(self._quiet, 60)
            while not self.stop.is_set() and (self.turns is None or self.asked < self.turns):
                self._turn()
            if self.hold:  # an open line, silent, until the end
                self.stop.wait()
        except CallClosed as exc:
            self.error = f"call closed: {exc}"
        except Exception as exc:
            self.error = repr(exc)
        finally:
            with contextlib.suppress(Exception):
                self.phone.stop()

    def _turn(self) -> None:
        self.phone.send_audio(QUESTION)
        self.asked += 1
        if not self._until(self._audible, ANSWER_TIMEOUT_S):
            self.unanswered += 1
            return
        step = self.windows.interruption_due(self.index) if self.windows else None
        if step is not None:
            self._interrupt(step)
        self._until(self._quiet, 60)
        self.stop.wait(self.rng.uniform(*PAUSE_S))

    def _interrupt(self, step: int) -> None:
        assert self.windows is not None
        self.stop.wait(BARGE_AFTER_S)
        if not self._audible():  # the answer was over already
            self.windows.skip(step)
            return
        queued = time.monotonic()
        self.phone.send_audio(QUESTION)
        # From the speech onset in the clip; the first frame leaves on the next 20 ms tick,
        # so this may count up to 20 ms too much, never too little.
        latency = self.phone.clear_latency(queued)
        self.windows.record(step, None if latency is None else latency - ONSET_S)
        self._until(self._audible, ANSWER_TIMEOUT_S)  # the answer to the interruption

    def _audible(self) -> bool:
        return self.phone.playout_end > time.monotonic()

    def _quiet(self) -> bool:
        return time.monotonic() - self.phone.playout_end > QUIET_S

    def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.stop.is_set() or time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True


class _Metronome:
    """Keeps a MediaLoop's 20 ms schedule, and so its phase, while no call is on it."""

    def on_tick(self, due: float, now: float) -> bool:
        return True


def phased_loops(k: int, phases: int = 1) -> list[MediaLoop]:
    """`k` MediaLoops of `phases` slots each, their k * phases send instants spread evenly
    over the 20 ms. Telnyx streams start whenever their calls do, so their frames do not
    all arrive at the same instant; on one shared loop every call's frame would arrive in
    the same burst, and a receiver that reads a burst per wake-up would look cheaper than
    it is with real traffic."""
    loops: list[MediaLoop] = []
    base = time.monotonic()
    for i in range(k):
        time.sleep(max(0.0, base + i * TICK / (k * phases) - time.monotonic()))
        loop = MediaLoop(phases=phases)
        loop.want_ticks(_Metronome())
        loops.append(loop)
    return loops


class Phones:
    """Calls placed on one voice server, spread over `loops` phased MediaLoops of `phases`
    slots each; `hang_up()` ends them all (threads joined, loops closed). Without a server
    and tenant (a PhoneFleet's process), it places the calls it is given (`place`)."""

    def __init__(
        self, server: VoiceServer | None, tenant: Tenant | None, loops: int, phases: int
    ) -> None:
        self.server, self.tenant = server, tenant
        self.stop = threading.Event()
        self.callers: list[Caller] = []
        self.tickets: list[Ticket] = []
        self.loops = phased_loops(loops, phases)
        self.windows = Windows()

    @property
    def send_lateness(self) -> float:
        """The phones' own worst lateness sending a frame (s), since the last reset."""
        return max(loop.max_lateness for loop in self.loops)

    def reset_lateness(self) -> None:
        for loop in self.loops:
            loop.max_lateness = 0.0

    def dial(
        self,
        n: int,
        *,
        turns: int | None = None,
        hold: bool = False,
        windows: bool = False,
        rate: float = CONNECTS_PER_S,
    ) -> None:
        """`n` new calls; `windows`: each interrupts once in every measured window."""
        assert self.server is not None and self.tenant is not None
        tickets = self.tenant.calls(n)
        self.tickets += tickets
        first = len(self.callers)
        lines = [(self.server.url(t), t.call_control_id, first + i) for i, t in enumerate(tickets)]
        self.place(lines, turns=turns, hold=hold, windows=windows, rate=rate)

    def place(
        self,
        lines: list[tuple[str, str, int]],
        *,
        turns: int | None = None,
        hold: bool = False,
        windows: bool = False,
        rate: float = CONNECTS_PER_S,
    ) -> None:
        """Connect a phone per (url, call_control_id, caller index), `rate` a second."""
        for url, call_control_id, index in lines:
            phone = FakeTelnyxCall(
                url, call_control_id=call_control_id, loop=self.loops[index % len(self.loops)]
            )
            phone.stamp_sent = True  # lag from when a frame left, not from its slot
            phone.connect()
            caller = Caller(
                index,
                phone,
                self.stop,
                turns=turns,
                hold=hold,
                windows=self.windows if windows else None,
                seed=index,
            )
            caller.start()
            self.callers.append(caller)
            time.sleep(1 / rate)

    def count(self) -> int:
        return len(self.callers)

    def questions(self) -> tuple[int, int]:
        """Asked and unanswered so far."""
        return sum(c.asked for c in self.callers), sum(c.unanswered for c in self.callers)

    def gaps(self, since: float, until: float) -> list[int]:
        """Per call, the underruns that began in [since, until]."""
        return [len(underruns(c.phone, since, until)) for c in self.callers]

    def wait_done(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for caller in self.callers:
            caller.join(max(0.0, deadline - time.monotonic()))

    def hang_up(self) -> None:
        self.stop.set()
        self.wait_done(30)
        for caller in self.callers:
            caller.phone.close()
        for loop in self.loops:
            loop.close()

    def errors(self) -> list[str]:
        return [c.error for c in self.callers if c.error]

    @property
    def pids(self) -> list[int]:
        return [os.getpid()]


class FleetWindows:
    """The measured windows of a PhoneFleet: opened and closed in every process."""

    def __init__(self, fleet: PhoneFleet) -> None:
        self.fleet = fleet

    def open(self, step: int) -> None:
        self.fleet.ask("open", step)

    def close(self) -> None:
        self.fleet.ask("close")

    def clears_of(self, step: int) -> list[float | None]:
        return [c for found in self.fleet.ask("clears", step) for c in found]


class PhoneFleet:
    """As Phones, with the calls dealt to `procs` processes of their own (`--phone-procs`):
    on this 2-core box 200 calls' caller threads and phone loops in the benchmark's own
    process share one GIL, and a phone loop waited up to seconds for it. Each process runs
    a Phones with its share of the `loops` loops; their send instants are spread over the
    20 ms too."""

    def __init__(
        self, server: VoiceServer, tenant: Tenant, procs: int, loops: int, phases: int
    ) -> None:
        self.server, self.tenant = server, tenant
        self.tickets: list[Ticket] = []
        self.windows = FleetWindows(self)
        spawn = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(procs):
            ours, theirs = spawn.Pipe()
            offset = i * TICK / (procs * loops * phases)
            proc = spawn.Process(
                target=_phone_process,
                args=(theirs, max(1, loops // procs), phases, offset),
                daemon=True,
            )
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)
        self.ask("ready")

    def ask(self, *command: Any) -> list[Any]:
        """Send `command` to every process; their answers, in order."""
        for conn in self.conns:
            conn.send(command)
        answers = [conn.recv() for conn in self.conns]
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    def dial(self, n: int, *, windows: bool = False, rate: float = CONNECTS_PER_S) -> None:
        tickets = self.tenant.calls(n)
        start = len(self.tickets)
        self.tickets += tickets
        dealt: list[list[tuple[str, str, int]]] = [[] for _ in self.conns]
        for i, ticket in enumerate(tickets):
            index = start + i
            dealt[index % len(self.conns)].append(
                (self.server.url(ticket), ticket.call_control_id, index)
            )
        for conn, lines in zip(self.conns, dealt, strict=True):
            conn.send(("place", lines, windows, rate / len(self.conns)))
        for conn in self.conns:
            if isinstance(answer := conn.recv(), BaseException):
                raise answer

    def count(self) -> int:
        return sum(self.ask("count"))

    def questions(self) -> tuple[int, int]:
        found = self.ask("questions")
        return sum(a for a, _ in found), sum(u for _, u in found)

    def gaps(self, since: float, until: float) -> list[int]:
        return [g for found in self.ask("gaps", since, until) for g in found]

    @property
    def send_lateness(self) -> float:
        return max(self.ask("lateness"))

    def reset_lateness(self) -> None:
        self.ask("reset")

    def errors(self) -> list[str]:
        return [e for found in self.ask("errors") for e in found]

    def hang_up(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("hang_up")
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    @property
    def pids(self) -> list[int]:
        return [os.getpid(), *(p.pid for p in self.procs)]


def _phone_process(conn: Connection, loops: int, phases: int, offset: float) -> None:
    """A PhoneFleet's process: a Phones, driven by commands from the benchmark."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    sys.setswitchinterval(0.0005)  # as main() does: the loops' threads get the GIL soon
    gc.disable()
    time.sleep(offset)
    phones = Phones(None, None, loops, phases)
    handlers: dict[str, Callable[..., Any]] = {
        "ready": lambda: True,
        "place": lambda lines, windows, rate: phones.place(lines, windows=windows, rate=rate),
        "count": phones.count,
        "questions": phones.questions,
        "gaps": phones.gaps,
        "lateness": lambda: phones.send_lateness,
        "reset": phones.reset_lateness,
        "errors": phones.errors,
        "open": phones.windows.open,
        "close": phones.windows.close,
        "clears": phones.windows.clears_of,
    }
    while True:
        try:
            name, *args = conn.recv()
        except EOFError:
            name, args = "hang_up", []
        if name == "hang_up":
            phones.hang_up()
            with contextlib.suppress(OSError):
                conn.send(True)
            return
        try:
            conn.send(handlers[name](*args))
        except Exception as exc:
            conn.send(RuntimeError(f"phone process: {name}: {exc!r}"))


def underruns(phone: FakeTelnyxCall, since: float, until: float) -> list[Gap]:
    """Gaps in the agent's audio inside one of its turns (a turn's last mark, or a clear,
    between two pieces is a turn boundary), that began in [since, until]."""
    last: dict[str, int] = {}
    for _, kind, name in phone.events:
        if kind == "mark":
            turn, _, sent = str(name).partition(":")
            with contextlib.suppress(ValueError):
                last[turn] = max(last.get(turn, 0), int(sent))

    def turn_end(name: str) -> bool:
        turn, _, sent = name.partition(":")
        return not sent.isdigit() or last.get(turn) == int(sent)

    gaps = phone.underruns(min_gap=UNDERRUN_GAP_S, is_turn_end=turn_end)
    return [gap for gap in gaps if since <= gap.at <= until]


# --- (a) loop overhead -----------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    endpoints: Endpoints
    data_dir: Path
    tenant: Tenant
    secret: str
    times: ProviderTimes
    fakes: Fakes | None = None
    runs: list[str] = field(default_factory=list)
    voice_cpu: int | None = None  # --pin: the core the voice worker has to itself
    all_cpus: set[int] = field(default_factory=lambda: os.sched_getaffinity(0))


def stats_row(name: str, values: list[float], unit: str = "ms") -> str:
    return (
        f"  {name:34} {len(values):>4} {pct(values, 50):>8.1f} {pct(values, 95):>8.1f} "
        f"{pct(values, 99):>8.1f} {max(values, default=math.nan):>8.1f}  {unit}"
    )


def turn_stats(figures: dict[str, list[float]], *, stt_label: str) -> list[str]:
    """The stored per-turn latencies as a table: voice-to-voice and its three stages."""
    return [
        stats_header(),
        stats_row("voice-to-voice (call_turns)", figures["v2v"]),
        stats_row(f"  {stt_label}", figures["stt"]),
        stats_row("  llm_ttft_ms", figures["llm_ttft"]),
        stats_row("  tts_ttfa_ms", figures["tts_ttfa"]),
    ]


def stats_header() -> str:
    return f"  {'':34} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"


def turn_figures(turns: list[CallTurn], sentence_ms: float = 0.0) -> dict[str, list[float]]:
    """Per answered question: v2v and its parts (the caller turn's STT, the reply's LLM/TTS),
    and `rest`: v2v less those parts and `sentence_ms` (first token → first sentence)."""
    out: dict[str, list[float]] = {
        "v2v": [],
        "stt": [],
        "llm_ttft": [],
        "tts_ttfa": [],
        "rest": [],
    }
    by_call: dict[uuid.UUID, list[CallTurn]] = {}
    for turn in turns:
        by_call.setdefault(turn.call_id, []).append(turn)
    for seq in by_call.values():
        for before, turn in itertools.pairwise(seq):
            if turn.speaker != "agent" or turn.voice_to_voice_ms is None:
                continue
            out["v2v"].append(turn.voice_to_voice_ms)
            if before.speaker == "caller" and before.stt_ms is not None:
                out["stt"].append(before.stt_ms)
            if turn.llm_ttft_ms is not None:
                out["llm_ttft"].append(turn.llm_ttft_ms)
            if turn.tts_ttfa_ms is not None:
                out["tts_ttfa"].append(turn.tts_ttfa_ms)
            stt, ttft, tts = before.stt_ms, turn.llm_ttft_ms, turn.tts_ttfa_ms
            if (
                before.speaker == "caller"
                and stt is not None
                and ttft is not None
                and tts is not None
            ):
                out["rest"].append(turn.voice_to_voice_ms - stt - ttft - tts - sentence_ms)
    return out


def run_a(ctx: Context) -> list[str]:
    args, times = ctx.args, ctx.times
    assert ctx.fakes is not None
    log(f"(a) loop overhead: {args.a_calls} calls x {args.a_turns} questions; {load_line()}")
    with voice_server(ctx, "a", ctx.fakes.env()) as server:
        quiet = wait_until_quiet(args.quiet_wait)
        log(f"  {quiet}")
        before = scrape(server)
        phones = Phones(server, ctx.tenant, ctx.args.phone_loops, ctx.args.phone_phases)
        try:
            phones.dial(args.a_calls, turns=args.a_turns, rate=2)
            phones.wait_done(args.a_turns * 30 + 60)
        finally:
            phones.hang_up()
        time.sleep(1)
        after = scrape(server)
    sentence_ms = times.first_sentence_ms() - times.llm_ttft_ms
    figures = turn_figures(ctx.tenant.turns(t.call_id for t in phones.tickets), sentence_ms)
    above = [v - times.total_ms for v in figures["v2v"]]
    overhead = histogram_delta(before, after, "voice_loop_overhead_seconds")
    within = 1 - overhead.above(0.02) / overhead.count if overhead.count else math.nan
    lines = [
        "",
        f"(a) loop overhead per turn: {args.a_calls} calls, {sum(c.asked for c in phones.callers)} "
        f"questions; {quiet}; after: {load_line()}",
        f"  providers (fakes, fixed): Deepgram final {times.stt_ms:.0f} ms after end of speech; "
        f"Groq first token {times.llm_ttft_ms:.0f} ms, then every {times.llm_token_ms:.0f} ms "
        f"(first sentence at {times.first_sentence_ms():.0f} ms); Cartesia first audio "
        f"{times.tts_ms:.0f} ms  =>  providers' own time {times.total_ms:.0f} ms",
        *turn_stats(figures, stt_label="caller turn stt_ms"),
        stats_row(f"v2v - providers ({times.total_ms:.0f} ms)", above),
        stats_row(f"v2v - stored parts - {sentence_ms:.0f} ms tokens", figures["rest"]),
        f"  voice_loop_overhead_seconds (loop's _latency, {overhead.count:.0f} turns, "
        f"bucketed): p50 {1000 * overhead.quantile(0.5):.1f} ms, p95 "
        f"{1000 * overhead.quantile(0.95):.1f} ms, p99 {1000 * overhead.quantile(0.99):.1f} ms; "
        f"<= 20 ms: {100 * within:.0f}%",
        f"  target p95 < 20 ms above the providers: "
        f"{'met' if pct(above, 95) < 20 else 'MISSED'} (p95 {pct(above, 95):.1f} ms)",
    ]
    errors = phones.errors()
    if errors or any(c.unanswered for c in phones.callers):
        unanswered = sum(c.unanswered for c in phones.callers)
        lines.append(f"  problems: {unanswered} unanswered, errors {errors[:3]}")
    return lines


# --- (b) calls per process -------------------------------------------------------------


@dataclass
class StepResult:
    calls: int
    lag: Histogram
    late_frames: float  # call-seconds whose worst frame was > 20 ms late
    underruns: int
    calls_with_underruns: int
    clears: list[float]
    clears_missing: int
    interrupted: int
    cpu: dict[str, float]
    rss_mb: float
    phone_lag_ms: float  # the phones' own worst lateness sending a frame
    fake_lag: dict[str, tuple[float, float, float]]  # see Fakes.lateness
    collections: str  # the worker's, see collections_delta
    long_gaps: str  # the pump's gaps over 20 ms, see long_gaps_delta
    gc_stalls: float  # the worker's garbage collections longer than LAG_LIMIT_S
    gc_worst: str  # and the longest one's bucket
    loop_lag: Histogram  # how late the worker's 50 ms probe timer fired (its own share)
    read_waits: Histogram  # per pump read: how long its data had been in the worker's kernel
    round_gaps: Histogram  # between two rounds of the pump
    v2v: list[float]
    answered: float  # share of questions answered
    questions_per_s: float
    fallbacks: dict[str, float]
    errors: list[str]
    playout_gaps: dict[str, float] = field(default_factory=dict)  # the worker's, by cause

    @property
    def ok(self) -> bool:
        """No frame > 20 ms late, no underrun, every clear in time, no fallback."""
        return self._passes(late_frames_allowed=0)

    @property
    def ok_relaxed(self) -> bool:
        """As `ok`, but up to 1% of call-seconds may have had a frame > 20 ms late."""
        return self._passes(late_frames_allowed=0.01 * self.lag.count)

    def _passes(self, late_frames_allowed: float) -> bool:
        return (
            self.lag.count > 0
            and self.late_frames <= late_frames_allowed
            and self.underruns == 0
            and self.clears_missing == 0
            and all(c <= CLEAR_LIMIT_S for c in self.clears)
            and not self.fallbacks
        )

    @property
    def ok_at_arrival(self) -> bool:
        """As `ok`, with each frame timed from its arrival at the voice process (the
        kernel's receive timestamp) rather than from its phone's stamp: the issue's "no
        frame handled later than 20 ms after arrival", apart from this box's load
        generator and loopback network."""
        return (
            self.read_waits.count > 0
            and self.late_reads == 0
            and self._passes(late_frames_allowed=math.inf)
        )

    @property
    def late_reads(self) -> float:
        """Pump reads whose data had waited > 20 ms, and gaps > 20 ms between two rounds."""
        return self.read_waits.above(LAG_LIMIT_S) + self.round_gaps.above(LAG_LIMIT_S)

    @property
    def cpu_per_call(self) -> float:
        return self.cpu.get("voice", math.nan) / self.calls


def measure_step(
    ctx: Context,
    server: VoiceServer,
    phones: Phones | PhoneFleet,
    step: int,
    meter: CpuMeter,
    hooks: Path,
) -> StepResult:
    """Settle, then one measured window over the calls now up."""
    gc.collect()  # here, not in the window (see main)
    time.sleep(ctx.args.settle)
    asked_before, unanswered_before = phones.questions()
    before, arrivals_before = scrape(server), read_arrivals(hooks)
    collections_before, long_gaps_before = read_collections(hooks), read_long_gaps(hooks)
    phones.reset_lateness()
    fakes = ctx.fakes
    assert fakes is not None
    fakes.lateness()
    phones.windows.open(step)
    since, wall_since = time.monotonic(), datetime.now(UTC)
    meter.restart()
    time.sleep(ctx.args.window)
    cpu = meter.percent()
    until, wall_until = time.monotonic(), datetime.now(UTC)
    phone_lag, fake_lag = phones.send_lateness, fakes.lateness()
    after, arrivals = scrape(server), read_arrivals(hooks)
    collections = collections_delta(collections_before, read_collections(hooks))
    long_gaps = long_gaps_delta(long_gaps_before, read_long_gaps(hooks))
    if not arrivals["waits"].count:
        long_gaps = "not measured (the worker hooks timed no pump read)"
    phones.windows.close()
    time.sleep(GRACE_S)
    lag = histogram_delta(before, after, "voice_inbound_frame_lag_seconds")
    gc_pauses = histogram_delta(before, after, "voice_gc_pause_seconds")
    loop_lag = histogram_delta(before, after, "voice_event_loop_lag_seconds")
    gaps = phones.gaps(since, until)
    clears = phones.windows.clears_of(step)
    asked, unanswered = phones.questions()
    asked, unanswered = asked - asked_before, unanswered - unanswered_before
    return StepResult(
        calls=phones.count(),
        lag=lag,
        late_frames=lag.above(LAG_LIMIT_S),
        gc_stalls=gc_pauses.above(LAG_LIMIT_S),
        gc_worst=gc_pauses.worst_bucket(),
        loop_lag=loop_lag,
        read_waits=arrivals["waits"].minus(arrivals_before["waits"]),
        round_gaps=arrivals["gaps"].minus(arrivals_before["gaps"]),
        underruns=sum(gaps),
        calls_with_underruns=sum(1 for g in gaps if g),
        clears=[c for c in clears if c is not None],
        clears_missing=sum(1 for c in clears if c is None),
        interrupted=len(clears),
        cpu=cpu,
        rss_mb=meter.rss_mb("voice"),
        phone_lag_ms=1000 * phone_lag,
        fake_lag=fake_lag,
        collections=collections,
        long_gaps=long_gaps,
        v2v=ctx.tenant.agent_v2v(wall_since, wall_until),
        answered=1 - unanswered / asked if asked else math.nan,
        questions_per_s=asked / (until - since),
        fallbacks=counters_delta(before, after, "voice_provider_fallbacks_total"),
        playout_gaps={
            key.partition("cause=")[2].rstrip("}"): value
            for key, value in counters_delta(before, after, "voice_playout_gaps_total").items()
        },
        errors=phones.errors(),
    )


def step_header() -> str:
    return (
        f"  {'calls':>5} {'lag p50':>7} {'p99':>6} {'worst':>8} {'>20ms':>5} {'under':>5} "
        f"{'clear n':>7} {'p50':>5} {'max':>5} {'miss':>4} {'v2v p50':>7} {'p95':>5} "
        f"{'ans%':>4} {'cpu voice':>9} {'/call':>5} {'fakes':>5} {'phones':>6} {'machine':>7} "
        f"{'steal':>5} {'rss MB':>6} {'ph.lag':>6} {'gc>20ms':>7} {'gc max':>8} {'loop p99':>8} "
        f"{'max':>8} {'arrival':>8} {'gaps':>8} {'>20ms':>5} {'silences':>8}  ok"
    )


def step_row(r: StepResult) -> str:
    fakes = sum(v for k, v in r.cpu.items() if k.startswith("fake-"))
    return (
        f"  {r.calls:>5} {1000 * r.lag.quantile(0.5):>5.1f}ms {1000 * r.lag.quantile(0.99):>4.0f}ms "
        f"{r.lag.worst_bucket():>8} {r.late_frames:>5.0f} {r.underruns:>5} "
        f"{r.interrupted:>7} {1000 * pct(r.clears, 50):>3.0f}ms {1000 * max(r.clears, default=math.nan):>3.0f}ms "
        f"{r.clears_missing:>4} {pct(r.v2v, 50):>5.0f}ms {pct(r.v2v, 95):>3.0f}ms "
        f"{100 * r.answered:>4.0f} {r.cpu.get('voice', math.nan):>8.0f}% {r.cpu_per_call:>5.2f} "
        f"{fakes:>4.0f}% {r.cpu.get('phones', math.nan):>5.0f}% {r.cpu.get('machine', math.nan):>6.0f}% "
        f"{r.cpu.get('steal', math.nan):>4.0f}% {r.rss_mb:>6.0f} {r.phone_lag_ms:>4.0f}ms {r.gc_stalls:>7.0f} {r.gc_worst:>8} "
        f"{1000 * r.loop_lag.quantile(0.99):>6.1f}ms {r.loop_lag.worst_bucket():>8} "
        f"{r.read_waits.worst_bucket():>8} {r.round_gaps.worst_bucket():>8} {r.late_reads:>5.0f} "
        f"{r.playout_gaps.get('tts', 0):>3.0f}/{r.playout_gaps.get('playout', 0):<4.0f}  "
        f"{'yes' if r.ok else 'NO'}"
        + (f"  fallbacks {r.fallbacks}" if r.fallbacks else "")
        + (f"  errors {len(r.errors)}: {r.errors[0]}" if r.errors else "")
    )


def cpu_meter(ctx: Context, server: VoiceServer, phones: Phones | PhoneFleet) -> CpuMeter:
    assert ctx.fakes is not None
    pids = {"voice": server.worker}
    pids |= {f"phones-{i}": pid for i, pid in enumerate(phones.pids)}
    pids |= {f"fake-{kind}": pid for kind, pid in ctx.fakes.pids.items()}
    return CpuMeter(pids)


def run_ramp(ctx: Context) -> list[str]:
    args = ctx.args
    assert ctx.fakes is not None
    log(f"(b) ramp {args.steps}; {load_line()}")
    results: list[StepResult] = []
    profile: list[str] = []
    extra = ctx.fakes.env() | {"VOICE_CHUNK_MS": "100", "VOICE_LEAD_MS": "200"}
    if args.tts_down:  # nothing listens there: every call falls back to the local voice
        extra["CARTESIA_URL"] = f"http://127.0.0.1:{processes.free_port()}"
    hooks = worker_hooks(ctx, extra, account=bool(args.account_calls))
    with voice_server(ctx, "b", extra) as server:
        phones: Phones | PhoneFleet = (
            PhoneFleet(server, ctx.tenant, args.phone_procs, args.phone_loops, args.phone_phases)
            if args.phone_procs > 1
            else Phones(server, ctx.tenant, args.phone_loops, args.phone_phases)
        )
        meter = cpu_meter(ctx, server, phones)
        quiet = wait_until_quiet(args.quiet_wait)
        log(f"  {quiet}")
        try:
            for step, calls in enumerate(args.steps):
                log(f"  {calls} calls ({load_line()})")
                phones.dial(calls - phones.count(), windows=True)
                result = measure_step(ctx, server, phones, step, meter, hooks)
                results.append(result)
                log(step_row(result))
                if calls == args.profile_calls:
                    profile = profile_worker(ctx, server, calls)
                if calls == args.account_calls:
                    profile += account_worker(hooks, args.profile_seconds, calls)
                if calls == args.perf_calls:
                    log(f"  perf: {args.profile_seconds:.0f} s at {calls} calls")
                    profile += perf_stacks.record(server.worker, args.profile_seconds, cpu=0)
                if (
                    result.lag.quantile(0.5) > 0.2
                    or pct(result.v2v, 50) > 2000
                    or result.answered < 0.5
                ):
                    log("  far past capacity: ramp stopped")
                    break
            leftover = full_collection_line(hooks, phones.count())
        finally:
            time.sleep(0.5)  # the hooks' tally is rewritten every 0.2 s
            hung_up, collections_before = phones.count(), read_collections(hooks)
            phones.hang_up()
        leftover += "\n" + hung_up_line(hooks, collections_before, hung_up)
    baseline = relay_baseline(ctx, results) if args.relay_streams else []
    best, strict = capacity(results, lambda r: r.ok)
    _, relaxed = capacity(results, lambda r: r.ok_relaxed)
    _, at_arrival = capacity(results, lambda r: r.ok_at_arrival)
    if not any(r.read_waits.count for r in results):
        at_arrival = "not measured (the worker hooks timed no pump read)"
    lines = [
        "",
        "(b) simultaneous calls in one voice process (VOICE_CHUNK_MS=100, VOICE_LEAD_MS=200, "
        f"VOICE_DELAYED_ACKS={os.environ.get('VOICE_DELAYED_ACKS', 'true')}), "
        f"{args.window:.0f} s window per step after {args.settle:.0f} s settling; {quiet}; "
        f"after: {load_line()}",
        "  lag = worst inbound frame lateness per call-second (voice_inbound_frame_lag_seconds, "
        "bucketed; from when the phone sent the frame, see ph.lag for the phones' own); gc>20ms "
        "= the worker's garbage collections longer than 20 ms (voice_gc_pause_seconds); >20ms = call-seconds with a frame later than 20 ms; under = agent-audio gaps "
        f"> {1000 * UNDERRUN_GAP_S:.0f} ms inside a turn; clear = caller speech start -> clear "
        f"at the phone (incl. Deepgram's {ctx.times.stt_ms:.0f} ms); cpu in % of one core; "
        "steal = the hypervisor's share of our vCPUs (in machine too; the VM is slower then); "
        "ph.lag = the phones' own worst send lateness; loop = how late the worker's 50 ms probe "
        "timer fired (voice_event_loop_lag_seconds); arrival = per read of the frame pump, how "
        "long its data had been in the voice process's kernel (SO_TIMESTAMPNS, worst bucket); "
        "gaps = between two rounds of the pump (worst bucket); >20ms = reads and gaps over 20 ms; "
        "silences = the worker's count of silences > 40 ms inside agent turns "
        "(voice_playout_gaps_total), no TTS audio yet / audio waiting in the worker",
        step_header(),
        *[step_row(r) for r in results],
        f"  capacity, the most simultaneous calls that pass (no frame > 20 ms late, no underrun, "
        f"every clear <= {1000 * CLEAR_LIMIT_S:.0f} ms): {strict}; "
        f"target >= 200: {'met' if best >= 200 else 'MISSED'}",
        f"  relaxed (<= 1% of call-seconds with a frame > 20 ms late, else the same): {relaxed}",
        f"  at the voice process (no frame read > 20 ms after it arrived there, no underrun, "
        f"clears in time; the lag from the phones' stamps not counted): {at_arrival}",
        "  fakes' CPU per step (% of one core) and (their worst lateness, LagProbe): "
        + "; ".join(f"{r.calls}: {fake_cpu(r)}" for r in results),
        "  the worker's garbage collections per window (hooks):",
        *[f"    {r.calls}: {r.collections}" for r in results],
        "  the pump's gaps over 20 ms per window, and where the worker's thread was (hooks):",
        *[f"    {r.calls}: {r.long_gaps}" for r in results],
        leftover,
        *baseline,
        *profile,
    ]
    return lines


def capacity(results: list[StepResult], passed: Callable[[StepResult], bool]) -> tuple[int, str]:
    """The most calls whose every window passed, and that said in words: with repeated
    steps (`--steps 200,200`) how many windows passed, e.g. "160; 200 passed 2 of 3 windows"."""
    by_calls: dict[int, list[bool]] = {}
    for r in results:
        by_calls.setdefault(r.calls, []).append(passed(r))
    best = max((calls for calls, oks in by_calls.items() if all(oks)), default=0)
    line = str(best)
    if best and len(by_calls[best]) > 1:
        line += f" ({len(by_calls[best])} of {len(by_calls[best])} windows)"
    failed = {c: oks for c, oks in by_calls.items() if c > best and len(oks) > 1 and any(oks)}
    for calls, oks in sorted(failed.items()):
        line += f"; {calls} passed {sum(oks)} of {len(oks)} windows"
    return best, line


@contextlib.contextmanager
def relay_server(ctx: Context) -> Iterator[tuple[int, int]]:
    """scripts/bench/relay.py under gunicorn's gevent worker, placed as the voice worker
    is (`--pin`); yields its port and its worker's pid."""
    port, path = processes.free_port(), processes.venv_path()
    gunicorn = shutil.which("gunicorn", path=path)
    assert gunicorn is not None
    argv = [gunicorn, "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}"]
    argv += ["--worker-connections", "2000", "scripts.bench.relay:app"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}
    with processes.running(
        "relay", argv, env, ctx.data_dir / "relay.log", processes.answers(port), timeout=60
    ) as proc:
        (worker,) = psutil.Process(proc.pid).children()
        if ctx.voice_cpu is not None:
            pin_threads(worker.pid, {ctx.voice_cpu})
        yield port, worker.pid


def relay_baseline(ctx: Context, results: list[StepResult]) -> list[str]:
    """The reference's naive relay (../shared/reference/performance.md §4) at
    `--relay-streams` open lines, in this same run: CPU per stream, and a call's CPU here
    against it (the VM's speed drifts between runs, not within minutes)."""
    streams, args = ctx.args.relay_streams, ctx.args
    log(f"  baseline: the naive flask-sock relay at {streams} streams")
    loops = phased_loops(args.phone_loops, args.phone_phases)
    phones: list[FakeTelnyxCall] = []
    with relay_server(ctx) as (port, worker):
        try:  # the phones hang up before the relay stops (it waits for open connections)
            for i in range(streams):
                url = f"ws://127.0.0.1:{port}/media/telnyx"
                phone = FakeTelnyxCall(
                    url, call_control_id=f"relay-{i}", loop=loops[i % len(loops)]
                )
                phone.connect()
                phone.start_line()
                phones.append(phone)
                time.sleep(1 / CONNECTS_PER_S)
            time.sleep(args.settle)
            meter = CpuMeter({"relay": worker})
            time.sleep(args.window)
            used = meter.percent()
            relay, steal = used["relay"], used["steal"]
            answered = sum(1 for p in phones if p.heard)
        finally:
            for phone in phones:
                phone.close()
            for loop in loops:
                loop.close()
    per_stream = relay / streams
    line = (
        f"  baseline (this run): the reference's naive flask-sock relay (JSON + base64 + "
        f"μ-law→PCM per frame, one frame back; wsproto framing) at {streams} open lines: "
        f"{relay:.0f}% of a core, {per_stream:.2f}% per stream ({answered} of {streams} "
        f"streams got frames back; steal {steal:.0f}%)"
    )
    near = min(results, key=lambda r: abs(r.calls - streams), default=None)
    if near is None or per_stream <= 0:
        return [line]
    ratio = near.cpu_per_call / per_stream
    return [
        line,
        f"  a Switchboard call at {near.calls} calls (three provider SDKs, turn-taking, "
        f"replies, stored turns): {near.cpu_per_call:.2f}% of a core = {ratio:.2f} x a relay stream",
    ]


def fake_cpu(r: StepResult) -> str:
    """Each fake's CPU (% of one core) and, in brackets, its worst lateness, when, and its
    longest garbage collection."""
    return " ".join(
        f"{kind} {r.cpu.get('fake-' + kind, math.nan):.0f} "
        f"({1000 * late:.0f} ms at {datetime.fromtimestamp(at, UTC):%H:%M:%S}, "
        f"gc {1000 * collection:.0f} ms)"
        for kind, (late, at, collection) in r.fake_lag.items()
    )


def run_chunks(ctx: Context) -> list[str]:
    """The same load at each VOICE_CHUNK_MS, then at 100 ms with open lines and no
    questions: the floor of a call's cost, and by difference what a question costs."""
    args = ctx.args
    rows: list[tuple[str, StepResult]] = []
    quiets: list[str] = []
    runs = [(f"{chunk} ms", chunk, False) for chunk in args.chunk_sizes]
    runs.append(("100 ms, no questions", 100, True))
    for label, chunk, idle in runs:
        log(f"(b) VOICE_CHUNK_MS={chunk} at {args.chunk_calls} calls{', idle' * idle}")
        result, quiet = chunk_run(ctx, chunk, idle)
        rows.append((label, result))
        quiets.append(quiet)
        log(step_row(result))
    lines = [
        "",
        f"(b) outbound chunk size at {args.chunk_calls} calls (VOICE_LEAD_MS=200); before each "
        "run: " + " | ".join(quiets),
        f"  {'VOICE_CHUNK_MS':20}" + step_header()[2:],
        *[f"  {label:20}" + step_row(r)[2:] for label, r in rows],
    ]
    busy = {label: r for label, r in rows}
    base, silent = busy.get("100 ms"), busy.get("100 ms, no questions")
    for label, r in rows:
        change = (
            f" ({100 * (r.cpu_per_call / base.cpu_per_call - 1):+.0f}% vs 100 ms)" if base else ""
        )
        lines.append(f"  {label:20}: {r.cpu_per_call:.2f}% of a core per call{change}")
    if base and silent and base.questions_per_s:
        per_question = 10 * (base.cpu["voice"] - silent.cpu["voice"]) / base.questions_per_s
        lines.append(
            f"  an open line costs {silent.cpu_per_call:.2f}% of a core; each question and its "
            f"answer {per_question:.0f} ms of CPU more ({base.questions_per_s:.1f} questions/s "
            f"at {args.chunk_calls} calls)"
        )
    return lines


def chunk_run(ctx: Context, chunk: int, idle: bool) -> tuple[StepResult, str]:
    assert ctx.fakes is not None
    args = ctx.args
    extra = ctx.fakes.env() | {"VOICE_CHUNK_MS": str(chunk), "VOICE_LEAD_MS": "200"}
    label = f"chunk{chunk}{'-idle' * idle}"
    hooks = worker_hooks(ctx, extra, account=False)
    with voice_server(ctx, label, extra) as server:
        phones = Phones(server, ctx.tenant, args.phone_loops, args.phone_phases)
        meter = cpu_meter(ctx, server, phones)
        quiet = wait_until_quiet(args.quiet_wait)
        log(f"  {quiet}")
        try:
            if idle:
                phones.dial(args.chunk_calls, turns=0, hold=True)
            else:
                phones.dial(args.chunk_calls, windows=True)
            return measure_step(ctx, server, phones, 0, meter, hooks), quiet
        finally:
            phones.hang_up()


# --- py-spy ----------------------------------------------------------------------------

CATEGORIES = (  # (label, path fragments), first match wins, by the sampled leaf frame
    ("websocket to Telnyx (media_socket, websockets protocol)", ("web/voice/media_socket.py",)),
    ("flask-sock / werkzeug / gunicorn", ("flask_sock", "werkzeug", "gunicorn", "flask/")),
    ("provider sockets (websockets, deepgram sdk)", ("websockets/", "deepgram/")),
    ("Cartesia sdk", ("cartesia/",)),
    ("Groq sdk / httpx", ("groq/", "httpx", "httpcore", "h11/", "anyio", "pydantic")),
    ("gevent hub, greenlets, queues", ("gevent/", "greenlet")),
    ("stdlib socket/ssl/selectors", ("/socket.py", "/ssl.py", "selectors.py")),
    ("stdlib threading/queue", ("/threading.py", "/queue.py")),
    ("json / base64 (stdlib)", ("/json/", "/base64.py")),
    ("prometheus_client", ("prometheus_client",)),
    ("database (sqlalchemy, psycopg)", ("sqlalchemy", "psycopg")),
    ("logging", ("/logging/",)),
    ("voice loop: Telnyx protocol", ("shared/voice/telnyx_media.py",)),
    ("voice loop: playout", ("shared/voice/playout.py",)),
    ("voice loop: call loop, responder, sentences", ("shared/voice/",)),
    ("media stream handler", ("web/voice/",)),
    ("providers (ours)", ("shared/providers/",)),
)


ACTIVITIES = (  # (label, (file fragment, function)) found anywhere in the stack, first wins
    ("caller audio -> Deepgram (from the frame handler)", ("stt/deepgram.py", "send")),
    ("Deepgram results (in websockets' reader)", ("stt/deepgram.py", "_on_message")),
    ("frame handler: parse, reorder, hand to STT", ("web/voice/media.py", "_read")),
    ("agent audio out: playout steps, media+mark", ("voice/playout.py", "_step")),
    ("TTS audio in (Cartesia reader, pump)", ("tts/cartesia.py", "_on_message")),
    ("TTS audio in (Cartesia reader, pump)", ("voice/responder.py", "_pump_audio")),
    ("reply: LLM stream, sentences, TTS push", ("voice/call_loop.py", "_run_reply")),
    ("turn records: sentiment, database", ("voice/call_loop.py", "_store_caller")),
    ("turn records: sentiment, database", ("voice/recorder.py", "_drain")),
    ("call start / end (context, providers, close)", ("web/voice/media.py", "media_stream")),
)


def _activity(names: Iterable[tuple[str, str]]) -> str:
    found = set(names)
    for label, (fragment, function) in ACTIVITIES:
        if any(fragment in file and name.endswith(function) for file, name in found):
            return label
    return "hub loop and the rest (libev, epoll, switches)"


def _category(path: str) -> str:
    return next((label for label, parts in CATEGORIES if any(p in path for p in parts)), "other")


ACCOUNT_LABELS = {  # greenlets by the function they run
    "web.voice.read_ticker.ReadTicker._run_pump": (
        "pump: callers' frames in (read, parse, reorder, to STT), playout steps out"
    ),
    "pump rounds at checkpoints": "pump, its rounds at other greenlets' checkpoints",
    "shared.voice.call_loop.CallLoop._run_reply": "replies: LLM stream, sentences, TTS push",
    "shared.providers.stt.deepgram.DeepgramStream._send_loop": "caller audio -> Deepgram",
    "shared.voice.playout.Playout.run": "agent audio out (playout pacer, no ticker)",
    "threading.Thread._bootstrap": "websockets' readers: Deepgram results, Cartesia audio",
    "gevent._gevent_cgreenlet.Greenlet._run": "short-lived greenlets (turn records, ...)",
    "shared.voice.recorder.TurnWriter._drain": "turn writer (database)",
    "shared.voice.responder._pump_audio": "TTS audio in (responder pump)",
    "gevent.hub.hub": "gevent hub: event loop, timers, switches",
}


def worker_hooks(ctx: Context, env: dict[str, str], *, account: bool) -> Path:
    """Load scripts/bench/worker_hooks into the voice worker (through `env`); the directory
    where they write. The account, if asked for, is off until account_worker() turns it on."""
    directory = ctx.data_dir / "worker-hooks"
    directory.mkdir(exist_ok=True)
    for name in ("on", "arrivals.json", "account.json"):
        (directory / name).unlink(missing_ok=True)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{HOOKS}"
    env["BENCH_HOOKS_DIR"] = str(directory)
    if account:
        env["BENCH_ACCOUNT"] = "1"
    for name in ("BENCH_UNTIMED", "BENCH_READER_READS"):
        if os.environ.get(name) == "1":
            env[name] = "1"
    return directory


def account_worker(directory: Path, seconds: float, calls: int) -> list[str]:
    """The worker's CPU per greenlet for `seconds` (scripts/bench/worker_hooks)."""
    log(f"  greenlet account: {seconds:.0f} s at {calls} calls")
    (directory / "on").touch()
    time.sleep(seconds)
    (directory / "on").unlink()
    try:
        account = json.loads((directory / "account.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"  greenlet account: no data ({exc})"]
    span = max(account["seconds"], 1e-9)
    rows = sorted(((cpu, key) for key, cpu in account["cpu"].items()), reverse=True)
    total = sum(cpu for cpu, _ in rows)
    lines = [
        f"  the worker's CPU per greenlet at {calls} calls over {span:.1f} s "
        f"({100 * total / span:.0f}% of a core with the hook on; a switch costs a few µs more):"
    ]
    for cpu, key in rows[:14]:
        runs = account["runs"].get(key, 0)
        lines.append(
            f"    {100 * cpu / span:5.1f}%  {runs / span:6.0f} runs/s  "
            f"{1e6 * cpu / max(runs, 1):6.1f} µs/run  {ACCOUNT_LABELS.get(key, key)}"
        )
    return (
        lines
        + stall_lines(account.get("stalls", []), span)
        + long_run_lines(account.get("long_runs", []), span)
        + census_lines(directory, calls)
    )


def ask_hooks(directory: Path, request: str, answer: str, timeout_s: float = 10) -> Any:
    """Ask the worker hooks for something (the file `request` appears) and return their
    answer (the JSON file `answer`), waiting up to `timeout_s`. Raises OSError or
    ValueError when none came or it is not JSON."""
    (directory / answer).unlink(missing_ok=True)
    (directory / request).touch()
    deadline = time.monotonic() + timeout_s
    while not (directory / answer).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return json.loads((directory / answer).read_text())


def full_collection_line(directory: Path, calls: int) -> str:
    """Ask the worker hooks for one full collection now, with every call still up: the
    cyclic garbage left since the last one (all of the run's, where the worker runs none
    of its own during calls)."""
    try:
        found = ask_hooks(directory, "collect", "collected.json")
    except (OSError, ValueError) as exc:
        return f"  a full collection after the last window: no data ({exc})"
    return (
        f"  a full collection after the last window, {calls} calls up: walked "
        f"{found['walked']:,} objects, freed {found['freed']:,}, "
        f"{1000 * found['seconds']:.0f} ms with the GIL held"
    )


def hung_up_line(directory: Path, before: list[list[float]], calls: int) -> str:
    """What the calls just hung up left to a full collection: the worker runs one itself
    once no call is up (web/voice/gc_policy.py); its count is read off the hooks' tally."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = read_collections(directory)
        if after[2][0] > before[2][0]:
            freed, took = after[2][1] - before[2][1], after[2][2] - before[2][2]
            return (
                f"  the worker's own full collection after {calls} calls hung up: freed "
                f"{freed:,.0f} objects ({freed / max(calls, 1):.0f} a call), {1000 * took:.0f} ms"
            )
        time.sleep(0.2)
    return f"  no full collection in the worker within 15 s of {calls} calls hanging up"


def census_lines(directory: Path, calls: int, top: int = 20) -> list[str]:
    """What a full collection in the worker walks, by type, per call (worker_hooks)."""
    try:
        found = ask_hooks(directory, "census", "census.json")
    except (OSError, ValueError) as exc:
        return [f"  census: no data ({exc})"]
    total, by_type = found["total"], found["by_type"]
    lines = [
        f"  the oldest generation at {calls} calls (what a full collection walks): "
        f"{total:,} objects, {total / calls:.0f} a call; the most common types, a call:"
    ]
    for name, count in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {count / calls:7.1f}  {name}")
    return lines


def long_run_lines(runs: list[dict[str, Any]], span: float) -> list[str]:
    """Greenlet runs over 10 ms of their own CPU (pump rounds at their checkpoints are
    counted apart, as rounds of their own), by where each ended: nothing else runs
    meanwhile, so every call's frames wait."""
    if not runs:
        return ["  no greenlet run over 10 ms of CPU"]
    lines = [
        f"  {len(runs)} greenlet runs over 10 ms of CPU in {span:.0f} s; the longest, and where they ended:"
    ]
    for run in sorted(runs, key=lambda r: -r["cpu"])[:8]:
        label = ACCOUNT_LABELS.get(run["label"], run["label"])
        ended = " < ".join(run["where"][:4])
        lines.append(f"    {1000 * run['cpu']:5.1f} ms  {label}{': ' + ended if ended else ''}")
    return lines


def stall_lines(stalls: list[dict[str, Any]], span: float) -> list[str]:
    """The gaps over 15 ms between two rounds of the frame pump, and what filled them."""
    if not stalls:
        return ["  no gap over 15 ms between two rounds of the frame pump"]
    gaps = [s["gap"] for s in stalls]
    by: dict[str, float] = {}
    for stall in stalls:
        for key, value in stall["by"].items():
            by[key] = by.get(key, 0.0) + value
    cpu = sum(s.get("cpu", math.nan) for s in stalls)
    lines = [
        f"  {len(stalls)} gaps over 15 ms between two rounds of the frame pump in {span:.0f} s "
        f"(p50 {1000 * pct(gaps, 50):.1f} ms, max {1000 * max(gaps):.1f} ms, "
        f"{statistics.mean(s['runs'] for s in stalls):.0f} greenlet runs each; the worker's "
        f"thread on its core for {100 * cpu / sum(gaps):.0f} % of their wall time, the rest "
        f"off its core: the hypervisor, another task or a blocking call); wall time in them:"
    ]
    longest = sorted(stalls, key=lambda s: -s["gap"])[:5]
    lines.append(
        "    the longest, wall (the thread's CPU): "
        + ", ".join(
            f"{1000 * s['gap']:.0f} ({1000 * s.get('cpu', math.nan):.0f}) ms" for s in longest
        )
    )
    for key, value in sorted(by.items(), key=lambda kv: -kv[1])[:12]:
        shown = f"{value:.0f}" if key.endswith("#") else f"{100 * value / sum(gaps):5.1f}%"
        lines.append(f"    {shown:>6}  {ACCOUNT_LABELS.get(key, key)}")
    return lines


def profile_worker(ctx: Context, server: VoiceServer, calls: int) -> list[str]:
    """py-spy the voice worker for a while; the top of its self time, by area and line."""
    seconds, rate = ctx.args.profile_seconds, 100
    out = ctx.data_dir / f"voice-{calls}-calls.speedscope.json"
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return ["  (py-spy not installed: .venv/bin/pip install py-spy)"]
    log(f"  py-spy: {seconds:.0f} s at {calls} calls")
    command = [py_spy, "record", "-p", str(server.worker), "-d", str(int(seconds))]
    command += ["-r", str(rate), "--nonblocking", "--format", "speedscope", "-o", str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0 or not out.exists():
        return [f"  py-spy failed ({done.returncode}): {done.stderr.strip()[-300:]}"]
    return summarise_profile(out, seconds, calls)


def summarise_profile(path: Path, seconds: float, calls: int, top: int = 12) -> list[str]:
    """Self time by area and by source line, and the heaviest functions, from a py-spy
    speedscope file (each sample a root-to-leaf stack, weighed in seconds)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    by_area: Counter[str] = Counter()
    by_activity: Counter[str] = Counter()
    by_line: Counter[tuple[str, int, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            total += weight
            leaf = frames[stack[-1]]
            by_area[_category(leaf.get("file", ""))] += weight
            by_activity[
                _activity((frames[i].get("file", ""), frames[i]["name"]) for i in stack)
            ] += weight
            by_line[(leaf.get("file", ""), int(leaf.get("line") or 0), leaf["name"])] += weight
            for key in {(frames[i].get("file", ""), frames[i]["name"]) for i in stack}:
                inclusive[key] += weight
    if not total:
        return ["  py-spy: no samples"]
    lines = [
        "",
        f"  py-spy of the voice worker at {calls} calls: {total:.1f} s of samples in {seconds:.0f} s "
        f"({100 * total / seconds:.0f}% of one core seen busy); self time by area (leaf frame):",
    ]
    lines += [f"    {100 * w / total:5.1f}%  {area}" for area, w in by_area.most_common()]
    lines.append("  by activity (the greenlet or handler each sample ran in):")
    lines += [f"    {100 * w / total:5.1f}%  {label}" for label, w in by_activity.most_common()]
    lines.append("  top lines by self time (C calls count to the Python line that made them):")
    for (file, line, name), w in by_line.most_common(top):
        source = linecache.getline(file, line).strip()[:70] if line else ""
        lines.append(f"    {100 * w / total:5.1f}%  {_short(file)}:{line} {name}  | {source}")
    lines.append("  top functions by inclusive time (outside the hub and greenlet run loops):")
    skip = ("run", "_run", "<module>", "run_forever", "handle", "__run_task", "worker")
    shown = 0
    for (file, name), w in inclusive.most_common():
        if name in skip or "threading.py" in file or "gevent/" in file:
            continue
        lines.append(f"    {100 * w / total:5.1f}%  {_short(file)} {name}")
        shown += 1
        if shown == top:
            break
    lines.append(f"  (speedscope profile: {path})")
    return lines


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- (c) local providers ---------------------------------------------------------------


def run_c(ctx: Context) -> list[str]:
    args = ctx.args
    log(f"(c) local providers: {args.c_calls} calls x {args.c_turns} questions; {load_line()}")
    extra = {"STT_PROVIDER": "local", "TTS_PROVIDER": "local", "LLM_PROVIDER": "local"}
    extra |= {"SENTIMENT_PROVIDER": "local"}
    tickets: list[Ticket] = []
    errors: list[str] = []
    # Not pinned: (c) is the local models' latency on this CPU, and they use every core.
    with voice_server(ctx, "c", extra, pinned=False) as server:
        quiet = wait_until_quiet(args.quiet_wait)
        log(f"  {quiet}")
        meter = CpuMeter({"voice": server.worker})
        for _ in range(args.c_calls):  # one call at a time: the latency of one turn alone
            phones = Phones(server, ctx.tenant, ctx.args.phone_loops, ctx.args.phone_phases)
            try:
                phones.dial(1, turns=args.c_turns)
                phones.wait_done(args.c_turns * 40 + 60)
            finally:
                phones.hang_up()
            tickets += phones.tickets
            errors += phones.errors()
        cpu = meter.percent()["voice"]
    turns = ctx.tenant.turns(t.call_id for t in tickets)
    figures = turn_figures(turns)
    heard = Counter(t.text for t in turns if t.speaker == "caller")
    answers = Counter(t.text for t in turns if t.speaker == "agent" and t.voice_to_voice_ms)
    lines = [
        "",
        f"(c) local providers (Whisper tiny.en + Silero VAD, local agent + MiniLM, Piper), "
        f"{args.c_calls} calls one after another, {len(figures['v2v'])} answered questions; "
        f"{quiet}; after: {load_line()}",
        f"  voice worker CPU over the phase: {cpu:.0f}% of one core",
        *turn_stats(figures, stt_label="caller stt_ms (silence+Whisper)"),
        f"  heard: {dict(heard.most_common(2))}",
        f"  answered: {dict(answers.most_common(2))}",
    ]
    if errors:
        lines.append(f"  errors: {errors[:3]}")
    return lines


# --- main ------------------------------------------------------------------------------


def pin_load_generators(pin: bool) -> int | None:
    """With `pin` on a machine of 2+ cores: this process and everything it starts from now
    on (phones, fake providers, PostgreSQL, Valkey, py-spy) on all cores but the last,
    which the voice worker gets to itself (voice_server). The load generators otherwise
    take CPU from the process under test: the way the reference figures were measured
    (server pinned to one vCPU, load generator on the other). Returns the voice core."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, set(cpus[:-1]))
    print(f"pinned   voice worker on CPU {cpus[-1]}; everything else on {cpus[:-1]}", flush=True)
    return cpus[-1]


@contextlib.contextmanager
def others_off(cpu: int | None, isolate: bool) -> Iterator[int]:
    """With `isolate`: every thread of the machine's other processes, and every kernel
    thread that may move, kept off `cpu` (the voice worker's) for the run, its affinity
    given back at the end; yields how many threads moved. `--pin` only places what the
    benchmark starts: a `perf` trace of the worker's core at 200 calls found the machine's
    own tasks there (the sandbox's agent, the kernel's DAMON monitor, Erlang VMs that
    RabbitMQ's `erl_child_setup` starts now and then, Redis, Mosquitto), some in the stalls
    that failed windows. Processes started later inherit their parent's affinity, so a
    moved service's children stay off too. Threads that refuse (per-CPU kernel threads)
    or are gone are skipped."""
    moved: list[tuple[int, set[int]]] = []
    if isolate and cpu is not None:
        mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
        for proc in psutil.process_iter():
            if proc.pid in mine or proc.pid == 0:
                continue
            with contextlib.suppress(OSError, psutil.Error):
                for thread in proc.threads():
                    before = os.sched_getaffinity(thread.id)
                    if cpu in before and len(before) > 1:
                        with contextlib.suppress(OSError):
                            os.sched_setaffinity(thread.id, before - {cpu})
                            moved.append((thread.id, before))
        print(f"isolate  {len(moved)} threads of other processes moved off CPU {cpu}", flush=True)
    try:
        yield len(moved)
    finally:
        for tid, before in moved:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)


def machine_facts() -> list[str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return [
        f"nproc    {len(os.sched_getaffinity(0))}",
        f"cpu      {model}",
        f"python   {platform.python_version()}; {native.describe()}"
        + ("; --interpreted: run as Python" if os.environ.get("BENCH_INTERPRETED") else "")
        + ("; --untimed: pump reads not timed" if os.environ.get("BENCH_UNTIMED") else "")
        + ("; --reader-reads" if os.environ.get("BENCH_READER_READS") else ""),
        f"started  {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {load_line()}",
    ]


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("phase", nargs="?", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--stt-ms", type=float, default=100.0)
    parser.add_argument("--llm-ttft-ms", type=float, default=150.0)
    parser.add_argument("--llm-token-ms", type=float, default=10.0)
    parser.add_argument("--tts-ms", type=float, default=80.0)
    parser.add_argument("--a-calls", type=int, default=3)
    parser.add_argument("--a-turns", type=int, default=10, help="questions per call in (a)")
    parser.add_argument("--steps", type=_ints, default=[10, 20, 30, 40, 50, 60, 80, 100, 150, 200])
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds before each window")
    parser.add_argument("--profile-calls", type=int, default=30, help="py-spy at this step")
    parser.add_argument(
        "--perf-calls",
        type=int,
        default=0,
        help="perf with DWARF stacks at this step: the worker's CPU by area (perf_stacks.py)",
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument(
        "--account-calls",
        type=int,
        default=0,
        help="the worker's CPU per greenlet at this step, for --profile-seconds (0: none)",
    )
    parser.add_argument(
        "--relay-streams",
        type=int,
        default=100,
        help="the naive flask-sock relay baseline at this many streams (0: none)",
    )
    parser.add_argument(
        "--tts-down",
        action="store_true",
        help="(b) with Cartesia unreachable: every call speaks with the local fallback voice",
    )
    parser.add_argument("--chunk-sizes", type=_ints, default=[20, 40, 100])
    parser.add_argument("--chunk-calls", type=int, default=30, help="0: no chunk-size runs")
    parser.add_argument("--c-calls", type=int, default=3)
    parser.add_argument("--c-turns", type=int, default=4, help="questions per call in (c)")
    parser.add_argument(
        "--phone-procs",
        type=int,
        default=2,
        help="(b) processes for the phones, the calls and loops dealt among them (1: this one)",
    )
    parser.add_argument(
        "--phone-loops",
        type=int,
        default=4,
        help="MediaLoop threads for the phones in all, their 20 ms ticks spread evenly",
    )
    parser.add_argument(
        "--phone-phases",
        type=int,
        default=5,
        help="send slots per phone loop: loops x phases instants per 20 ms (1: a burst per loop)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the voice worker alone on the last core, everything else on the others",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="with --pin: also keep the machine's other processes off the voice core for the run",
    )
    parser.add_argument(
        "--interpreted",
        action="store_true",
        help="the voice worker runs the frame path as Python even where it is compiled "
        "(shared/native.py), for an A/B against a run without it",
    )
    parser.add_argument(
        "--reader-reads",
        action="store_true",
        help="the provider sockets read by websockets' reader greenlets, not the read "
        "ticker's pump (shared.providers.messages), for an A/B against a run without it",
    )
    parser.add_argument(
        "--untimed",
        action="store_true",
        help="the worker hooks leave the pump's reads and rounds alone (no SO_TIMESTAMPNS "
        "recvmsg per read, no schedstat per round): the worker's CPU without them; the "
        "'at the voice process' verdict is then not measured",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each measured run, wait up to this many seconds for other load to settle",
    )
    return parser.parse_args()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers like Ctrl-C


def main() -> int:
    args = _parse_args()
    if args.interpreted:
        os.environ["BENCH_INTERPRETED"] = "1"  # voice_server passes it on
    if args.untimed:
        os.environ["BENCH_UNTIMED"] = "1"  # worker_hooks passes it on
    if args.reader_reads:
        os.environ["BENCH_READER_READS"] = "1"  # worker_hooks passes it on
    signal.signal(signal.SIGTERM, _on_sigterm)
    # The phones' MediaLoop threads share the GIL with a Caller thread per call; at the
    # default 5 ms switch interval a loop thread waited up to ~100 ms for its turn at 80
    # calls, and the voice process counted those late frames as its own.
    sys.setswitchinterval(0.0005)
    # For the same reason no automatic collections: a full one holds the GIL for as long
    # as it walks this process's objects. measure_step collects before each window.
    gc.disable()
    default_runtime = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
    runtime = Path(os.environ.setdefault("XDG_RUNTIME_DIR", str(default_runtime)))
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir = args.data_dir.resolve()
    settings = load_settings(data_dir=data_dir, database_url=None, redis_url=None)
    times = ProviderTimes(args.stt_ms, args.llm_ttft_ms, args.llm_token_ms, args.tts_ms)
    phases = {"a", "b", "c"} if args.phase == "all" else {args.phase}
    print("\n".join(["machine", *machine_facts()]), flush=True)
    all_cpus = os.sched_getaffinity(0)
    voice_cpu = pin_load_generators(args.pin)
    instants = args.phone_loops * args.phone_phases
    print(
        f"phones   {args.phone_loops} loop threads x {args.phone_phases} send slots: "
        f"frames leave at {instants} instants of each 20 ms; in (b) in {args.phone_procs} "
        f"process(es) of their own",
        flush=True,
    )
    with (
        others_off(voice_cpu, args.isolate),
        services(settings, database=DATABASE, fresh=True) as endpoints,
    ):
        upgrade(endpoints.database_url)
        engine = make_engine(endpoints.database_url, pool_size=2)
        try:
            secret = secrets.token_urlsafe(32)
            ctx = Context(args, endpoints, data_dir, Tenant(engine, secret), secret, times)
            ctx.voice_cpu, ctx.all_cpus = voice_cpu, all_cpus
            if phases & {"a", "b"}:
                with fake_providers(times) as fakes:
                    ctx.fakes = fakes
                    if "a" in phases:
                        print("\n".join(run_a(ctx)), flush=True)
                    if "b" in phases:
                        print("\n".join(run_ramp(ctx)), flush=True)
                        if args.chunk_calls > 0:  # 0: the ramp only
                            print("\n".join(run_chunks(ctx)), flush=True)
            if "c" in phases:
                print("\n".join(run_c(ctx)), flush=True)
        finally:
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
