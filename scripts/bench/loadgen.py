"""Closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight each.

`run(spec)` starts `python -m scripts.bench.loadgen` as a separate process, so the client
never shares an interpreter (or a GIL) with the server under test; the spec goes in on
stdin and the result comes back on stdout, both JSON. The child runs one greenlet per
connection on gevent sockets and speaks just enough HTTP/1.1 (Content-Length or chunked
bodies) to stay cheap: on a small machine the client competes with the server for CPU,
so it also reports the CPU it used, and that of any process trees it was asked to watch.

By default each request is a GET of a random entry of `paths`. For requests that must not
repeat (signed webhooks with unique event ids), a spec can give a body and extra headers
per entry, a method, and `once`: every entry is then sent at most once, in order.

Only loopback targets are accepted: this is for benchmarking a server started locally.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_HEAD_BYTES = 64 * 1024
ERROR_SAMPLES = 5


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: `concurrency` connections request random `paths` for `duration_s`
    after `warmup_s` (whose requests are not counted). `watch` names process trees (by
    root pid) whose CPU use over the measured window is reported."""

    port: int
    paths: list[str]
    concurrency: int
    duration_s: float = 10.0
    warmup_s: float = 2.0
    headers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    expect_status: int = 200
    timeout_s: float = 10.0
    max_requests: int = 2_000_000  # a bound, should the server answer absurdly fast
    watch: dict[str, int] = field(default_factory=dict)
    seed: int = 1
    # Optional, all defaulting to the GET behaviour above. `bodies` and `request_headers`,
    # when given, have one entry per entry of `paths`: that request's body (sent with a
    # Content-Length) and headers of its own (e.g. a signature over that body).
    method: str = "GET"
    bodies: list[str] = field(default_factory=list)
    request_headers: list[dict[str, str]] = field(default_factory=list)
    # Send each entry once, in order, instead of choosing at random; the run ends early if
    # they run out (LoadResult.exhausted, with duration_s the window actually measured).
    once: bool = False

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK:
            raise ValueError(f"load generation is for local servers only, not {self.host}")
        if not self.paths or self.concurrency < 1 or self.duration_s <= 0:
            raise ValueError("need paths, concurrency >= 1 and a positive duration")
        for name in ("bodies", "request_headers"):
            given = getattr(self, name)
            if given and len(given) != len(self.paths):
                raise ValueError(f"{name} needs one entry per path")


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    error_samples: list[str]
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    # CPU over the measured window, in % of one core: "loadgen", "machine" (all cores,
    # so up to nproc * 100) and one entry per watched tree.
    cpu_percent: dict[str, float]
    exhausted: bool = False  # `once` requests ran out before the window ended

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


def cpu_ms_per_request(result: LoadResult, tree: str) -> float:
    """CPU time of a watched process tree per request: unlike req/s, barely moved by a
    busy neighbour."""
    cpu_s = result.cpu_percent.get(tree, 0.0) / 100 * result.duration_s
    return 1000 * cpu_s / result.requests if result.requests else math.nan


class TableRow(Protocol):
    endpoint: str
    concurrency: int
    result: LoadResult


_SHORT = {"postgres": "pg"}


def print_table(
    title: str,
    rows: Sequence[TableRow],
    *,
    baseline: str,
    trees: Sequence[str],
    per_request: Sequence[str],
    notes: Callable[[Any], list[str]] = lambda row: [],
) -> None:
    """One line per run: counts, latency, p50 against the `baseline` endpoint's at the same
    concurrency, the CPU of each watched tree (plus the load generator's and the rest of
    the machine's), and the CPU per request of the `per_request` trees."""
    floor = {r.concurrency: r.result.p50_ms for r in rows if r.endpoint == baseline}
    width = max(len(r.endpoint) for r in rows) if rows else 8
    cpu_names = ["cpu% " + trees[0], *(_SHORT.get(t, t) for t in trees[1:]), "loadgen", "other"]
    header = (
        f"{'endpoint':{width}} {'conc':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6} {'p50/hz':>6}  "
        + " ".join(f"{name:>{max(len(name), 5)}}" for name in [*cpu_names, "machine"])
        + "".join(f" {_SHORT.get(t, t) + ' ms/req':>10}" for t in per_request)
    )
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    for row in rows:
        r, cpu = row.result, row.result.cpu_percent
        ratio = r.p50_ms / floor[row.concurrency] if row.concurrency in floor else 0.0
        ours = sum(cpu.get(name, 0.0) for name in (*trees, "loadgen"))
        values = [*(cpu.get(t, 0.0) for t in trees), cpu["loadgen"]]
        values += [max(0.0, cpu["machine"] - ours), cpu["machine"]]
        print(
            f"{row.endpoint:{width}} {row.concurrency:>4} {r.requests:>8} {r.rps:>7.0f} "
            f"{r.p50_ms:>7.2f} {r.p95_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.1f} "
            f"{r.errors:>6} {ratio:>6.1f}  "
            + " ".join(
                f"{value:>{max(len(name), 5)}.0f}"
                for name, value in zip([*cpu_names, "machine"], values, strict=True)
            )
            + "".join(f" {cpu_ms_per_request(r, t):>10.2f}" for t in per_request)
        )
        if r.exhausted:
            print(f"    the requests ran out: measured over {r.duration_s:.1f} s")
        for line in [*notes(row), *(f"error: {sample}" for sample in r.error_samples)]:
            print(f"    {line}")


def run(spec: LoadSpec) -> LoadResult:
    """Run `spec` in a fresh load-generator process and return what it measured."""
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.loadgen"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=spec.warmup_s + spec.duration_s + spec.timeout_s + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return LoadResult(**json.loads(proc.stdout))


# --- the child process ---------------------------------------------------------------


class _Connection:
    """One keep-alive connection; reconnects lazily after an error or `Connection: close`."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._sock: Any = None
        self._buf = bytearray()

    def exchange(self, request: bytes) -> int:
        """Send one request, read the whole response, return its status code."""
        if self._sock is None:
            self._connect()
        self._sock.sendall(request)
        head = self._read_until(b"\r\n\r\n")
        status, length, chunked, close = _parse_head(head)
        if chunked:
            self._skip_chunked()
        else:
            self._take(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf.clear()

    def _connect(self) -> None:
        from gevent import socket

        self._sock = socket.create_connection(self._address, timeout=self._timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buf.find(marker)) < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ValueError("response head too large")
            self._fill()
        end += len(marker)
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def _take(self, size: int) -> None:
        while len(self._buf) < size:
            self._fill()
        del self._buf[:size]

    def _skip_chunked(self) -> None:
        while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
            self._take(size + 2)
        while self._read_until(b"\r\n") != b"\r\n":  # trailer fields, then the blank line
            pass


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """(status, content length, chunked?, close?) from a response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = 0, False, lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    return status, length, chunked, close


@dataclass
class _Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    issued: int = 0
    exhausted_at: float | None = None

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(what)


def _requests(spec: LoadSpec) -> list[bytes]:
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.headers.items())
    if not spec.bodies and not spec.request_headers and spec.method == "GET":
        return [
            f"GET {path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n{extra}\r\n".encode()
            for path in spec.paths
        ]
    requests = []
    for i, path in enumerate(spec.paths):
        body = spec.bodies[i].encode() if spec.bodies else b""
        own = spec.request_headers[i] if spec.request_headers else {}
        head = "".join(f"{name}: {value}\r\n" for name, value in own.items())
        length = f"Content-Length: {len(body)}\r\n" if body or spec.method != "GET" else ""
        requests.append(
            f"{spec.method} {path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            f"{extra}{head}{length}\r\n".encode()
            + body
        )
    return requests


def _client(
    spec: LoadSpec, requests: list[bytes], window: tuple[float, float], tally: _Tally, seed: int
) -> None:
    """One connection's loop: request, wait for the answer, repeat until the window ends.
    Requests started inside the window count; warm-up ones only warm the server."""
    import gevent

    rng = random.Random(seed)
    conn = _Connection(spec.host, spec.port, spec.timeout_s)
    start, end = window
    try:
        while (began := time.perf_counter()) < end and tally.issued < spec.max_requests:
            if spec.once and tally.issued >= len(requests):
                tally.exhausted_at = tally.exhausted_at or began
                break
            request = requests[tally.issued] if spec.once else rng.choice(requests)
            tally.issued += 1
            try:
                status = conn.exchange(request)
            except (OSError, ValueError, gevent.Timeout) as exc:
                conn.close()
                if began >= start:
                    tally.error(f"{type(exc).__name__}: {exc}")
                gevent.sleep(0.01)  # a dead server must not turn this into a busy loop
                continue
            if began < start:
                continue
            tally.latencies_ms.append((time.perf_counter() - began) * 1000)
            if status != spec.expect_status:
                tally.error(f"HTTP {status}")
    finally:
        conn.close()


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))]


def _measure(spec: LoadSpec) -> LoadResult:
    import gevent

    requests = _requests(spec)
    tally = _Tally()
    now = time.perf_counter()
    window = (now + spec.warmup_s, now + spec.warmup_s + spec.duration_s)
    workers = [
        gevent.spawn(_client, spec, requests, window, tally, spec.seed * 1000 + i)
        for i in range(spec.concurrency)
    ]
    gevent.sleep(max(0.0, window[0] - time.perf_counter()))
    before = _cpu_snapshot(spec.watch)
    if spec.once:  # until the end of the window, or sooner if the requests run out
        gevent.joinall(workers, timeout=max(0.0, window[1] - time.perf_counter()))
    else:
        gevent.sleep(max(0.0, window[1] - time.perf_counter()))
    measured_s = min(time.perf_counter(), window[1]) - window[0]
    exhausted = tally.exhausted_at is not None and measured_s < spec.duration_s
    if not exhausted:
        measured_s = spec.duration_s
    elif measured_s <= 0:
        raise RuntimeError("the requests ran out during the warm-up: give more of them")
    after = _cpu_snapshot(spec.watch)
    gevent.joinall(workers, timeout=spec.timeout_s + 5)
    gevent.killall(workers, timeout=5)
    ordered = sorted(tally.latencies_ms)
    return LoadResult(
        requests=len(ordered),
        errors=tally.errors,
        error_samples=tally.error_samples,
        duration_s=measured_s,
        p50_ms=_percentile(ordered, 50),
        p95_ms=_percentile(ordered, 95),
        p99_ms=_percentile(ordered, 99),
        max_ms=ordered[-1] if ordered else math.nan,
        cpu_percent=_cpu_percent(before, after, measured_s),
        exhausted=exhausted,
    )


# --- CPU accounting from /proc ---------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _CpuSnapshot:
    own_s: float
    machine_s: float
    trees: dict[str, dict[int, float]]  # name -> pid -> CPU seconds so far


def _cpu_snapshot(watch: dict[str, int]) -> _CpuSnapshot:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    processes = _processes()
    return _CpuSnapshot(
        own_s=usage.ru_utime + usage.ru_stime,
        machine_s=_machine_busy_s(),
        trees={name: _tree(processes, root) for name, root in watch.items()},
    )


def _cpu_percent(before: _CpuSnapshot, after: _CpuSnapshot, seconds: float) -> dict[str, float]:
    used = {
        "loadgen": after.own_s - before.own_s,
        "machine": after.machine_s - before.machine_s,
    }
    for name, pids in after.trees.items():
        earlier = before.trees.get(name, {})
        used[name] = sum(max(0.0, cpu - earlier.get(pid, 0.0)) for pid, cpu in pids.items())
    return {name: round(100 * value / seconds, 1) for name, value in used.items()}


QUIET_PERCENT = 25.0


def wait_until_quiet(limit_s: float, busy_limit: float = QUIET_PERCENT) -> float:
    """Wait (at most `limit_s`) for other load on the machine to drop below `busy_limit`%
    of a core: the machine may be shared, and a busy neighbour skews every figure.
    Returns the last reading."""
    deadline = time.monotonic() + limit_s
    while (busy := background_percent(1.0)) > busy_limit and time.monotonic() < deadline:
        pass
    return busy


def add_run_arguments(parser: argparse.ArgumentParser, *, quiet_wait: float = 20.0) -> None:
    """The options every load benchmark takes: window, warm-up, concurrencies, quiet wait."""
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first")
    parser.add_argument(
        "--concurrency", type=lambda v: [int(c) for c in v.split(",")], default=[1, 32]
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=quiet_wait,
        help="before each run, wait up to this many seconds for other load to settle",
    )


def background_percent(seconds: float = 1.0) -> float:
    """CPU busy on the whole machine over the next `seconds`, in % of one core: between
    runs, when the server under test idles, this is load from something else."""
    before = _machine_busy_s()
    time.sleep(seconds)
    return 100 * (_machine_busy_s() - before) / seconds


def _machine_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / _TICK


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) for every process we may read."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK)
    return table


def _tree(processes: dict[int, tuple[int, float]], root: int) -> dict[int, float]:
    members, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in processes.items() if ppid == parent]
        members.update(children)
        frontier.extend(children)
    return {pid: processes[pid][1] for pid in members if pid in processes}


def main() -> None:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    result = _measure(spec)
    json.dump(asdict(result), sys.stdout)


if __name__ == "__main__":
    main()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers like Ctrl-C


def bench_settings(data_dir: Path) -> Settings:
    """How every benchmark starts: SIGTERM unwinds like Ctrl-C (so servers stop), the
    runtime dir the embedded PostgreSQL needs (as scripts/bootstrap.sh sets), settings."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    default_runtime = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
    runtime = Path(os.environ.setdefault("XDG_RUNTIME_DIR", str(default_runtime)))
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = load_settings(data_dir=data_dir)
    if settings.database_url:
        print("note: DATABASE_URL is set; the bench tenant is added to it", file=sys.stderr)
    return settings
