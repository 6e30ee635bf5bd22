"""The voice benchmark's hooks in the voice worker, loaded through PYTHONPATH by the
benchmark only (`BENCH_HOOKS_DIR`), each writing what it found to a file there.

**Frame arrivals** (on unless `--untimed`, `BENCH_UNTIMED=1`): for each read of the frame
pump, how long the data had been in the kernel (SO_TIMESTAMPNS, the last segment read), so
the benchmark measures what the issue asks of a frame, "handled no later than 20 ms after
arrival", at the voice process itself. The frame lag from the phones' `media.timestamp`
also counts the load generator: on this 2-core machine, at 200 calls, its phones share one
busy core and one GIL, and a frame can leave a phone (or cross the loopback) well after it
was stamped. Costs a `recvmsg` and its ancillary data instead of a `recv` (~1-2 µs a read).
With them, the gaps between two pump rounds (the kernel stamps a read with its newest
segment, so a frame that waited through a gap shows in the gap). Bucket counts in
`arrivals.json`, rewritten every 0.2 s. And for the gaps over `LONG_GAP_S`, where the
worker's thread was in them (from /proc/thread-self/schedstat, ~1 µs a round): on its core
(its own work: a long greenlet run, a collection), waiting for it in the kernel's run queue
(another task on its core), or neither (the hypervisor had taken the vCPU, or the thread
blocked in a call).

**The per-greenlet CPU account** (`--account-calls`, `BENCH_ACCOUNT=1`):

Why not py-spy alone: in a gevent process it charged a quarter of the worker's samples to
the hub's `loop.run()` line, where perf (with DWARF stacks) finds only ~7 % of the worker's
time in C below the event loop outside the interpreter. Here `greenlet.settrace` adds up
the thread's CPU time between switches for each greenlet, labelled by the function it runs.
A switch costs a few µs more while it is on (off, a trace call that returns at once).

It also keeps the stalls: every gap of more than `STALL_S` (wall clock) between two rounds
of the read ticker's pump, which reads every call's frames (in its own greenlet, or in any
at a checkpoint: shared/realtime.py), with what ran in the gap (wall time per greenlet, and
the garbage collector's) and the thread's CPU time in it (less than the gap when the
thread was off its core: the hypervisor's steal, another task, a blocking call): a frame
that waits through one is late.

On while the file `on` exists there; the totals so far are written to `account.json` every
0.2 s while on.

**A census of the oldest generation** (with the account, once, when the file `census`
appears): the objects a full collection walks (the frozen start-up objects left out), by
type, in `census.json`. Taking it holds the interpreter for about as long as a full
collection, so the benchmark asks for it after a window, never in one.

**Garbage collections** (always on): per generation, how many, what they freed and how
long they took, in `arrivals.json`; and one full collection on request (the file
`collect`, answered in `collected.json`): what the run left for it to free.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import importlib.abc
import importlib.util
import json
import os
import socket
import struct
import sys
import time
import weakref
from typing import Any

DIRECTORY = os.environ.get("BENCH_HOOKS_DIR")
ARRIVAL_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  # and one more: over 100 ms
STALL_S = 0.015
LONG_RUN_S = 0.01  # a greenlet run with more CPU than this is kept, with where it ended
MAX_STALLS = 500
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")
PUMP_LABEL = "web.voice.read_ticker.ReadTicker._run_pump"
CHECKPOINT_LABEL = "pump rounds at checkpoints"  # charged here, not to the greenlet they ran in


def where(g: Any) -> list[str]:
    """Where greenlet `g` switched out: its innermost frames outside gevent and greenlet."""
    frame, found = getattr(g, "gr_frame", None), []
    while frame is not None and len(found) < 6:
        path = frame.f_code.co_filename
        if "/gevent/" not in path and "/greenlet/" not in path:
            found.append(f"{path.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return found


def label_of(g: Any) -> str:
    """What greenlet `g` runs: the function's module and qualified name."""
    run = getattr(g, "_run", None) or getattr(g, "run", None)
    run = getattr(run, "func", run)  # a functools.partial
    name = "hub" if type(g).__name__ == "Hub" else getattr(run, "__qualname__", type(g).__name__)
    module = getattr(run, "__module__", None) or type(getattr(run, "__self__", None)).__module__
    return f"{module if module != 'builtins' else ''}.{name}"  # compiled methods: their class's


class Account:
    def __init__(self) -> None:
        self.on = False
        self.cpu: dict[str, float] = {}
        self.runs: dict[str, int] = {}
        # Labelled when first switched to (gevent drops a Greenlet's `_run` once it
        # returns, before its last switch); weakly keyed, since a dead greenlet's id() is
        # soon another's.
        self.labels: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self.current = "?"  # the label of the greenlet running now
        self.cpu_at: float | None = None  # the thread's CPU time at the last switch
        self.pumped_in_run = 0.0  # CPU of pump rounds at checkpoints since the last switch
        self.wall_at = 0.0  # wall time at the last switch (or pump round)
        self.started = 0.0
        # Stalls: wall time per greenlet since the last pump round began.
        self.gap: dict[str, float] = {}
        self.gap_runs = 0
        self.round_at = 0.0
        self.round_cpu = 0.0  # the thread's CPU time then
        self.gc_at = 0.0
        self.stalls: list[dict[str, Any]] = []
        self.long_runs: list[dict[str, Any]] = []  # greenlet runs over LONG_RUN_S of CPU

    def start(self) -> None:
        self.cpu.clear()
        self.runs.clear()
        self.stalls.clear()
        self.long_runs.clear()
        self.gap.clear()
        self.cpu_at, self.round_at, self.started = None, 0.0, time.monotonic()
        self.on = True

    def label(self, g: Any) -> str:
        found = self.labels.get(g)
        if found is None:
            found = self.labels[g] = label_of(g)
        return found

    def switch(self, event: str, args: tuple[Any, Any]) -> None:
        """greenlet's trace function."""
        if not self.on or event not in ("switch", "throw"):
            return
        cpu, wall = time.thread_time(), time.perf_counter()
        key, self.current = self.label(args[0]), self.label(args[1])
        if self.cpu_at is not None:
            own = cpu - self.cpu_at - self.pumped_in_run  # pump rounds at its checkpoints: theirs
            if own > LONG_RUN_S and len(self.long_runs) < MAX_STALLS:
                self.long_runs.append({"label": key, "cpu": own, "where": where(args[0])})
            self.cpu[key] = self.cpu.get(key, 0.0) + cpu - self.cpu_at
            self.runs[key] = self.runs.get(key, 0) + 1
            self.gap[key] = self.gap.get(key, 0.0) + wall - self.wall_at
            self.gap_runs += 1
        self.cpu_at, self.wall_at, self.pumped_in_run = cpu, wall, 0.0

    def pumped(self, cpu: float) -> None:
        """A pump round took `cpu` inside another greenlet (a checkpoint): the pump's."""
        if self.on and self.current != PUMP_LABEL:
            self.pumped_in_run += cpu
            if cpu > LONG_RUN_S and len(self.long_runs) < MAX_STALLS:
                self.long_runs.append({"label": CHECKPOINT_LABEL, "cpu": cpu, "where": []})
            self.cpu[self.current] = self.cpu.get(self.current, 0.0) - cpu
            self.cpu[CHECKPOINT_LABEL] = self.cpu.get(CHECKPOINT_LABEL, 0.0) + cpu
            self.runs[CHECKPOINT_LABEL] = self.runs.get(CHECKPOINT_LABEL, 0) + 1

    def pump_round(self) -> None:
        """A pump round begins: close the gap since the last one."""
        if not self.on:
            return
        wall, cpu = time.perf_counter(), time.thread_time()
        self.gap[self.current] = self.gap.get(self.current, 0.0) + wall - self.wall_at
        self.wall_at = wall
        if self.round_at and wall - self.round_at > STALL_S and len(self.stalls) < MAX_STALLS:
            gap = {
                "gap": wall - self.round_at,
                "cpu": cpu - self.round_cpu,  # the thread's: less than the gap when off its core
                "runs": self.gap_runs,
                "by": dict(self.gap),
            }
            self.stalls.append(gap)
        self.round_at, self.round_cpu, self.gap_runs = wall, cpu, 0
        self.gap.clear()

    def collection(self, phase: str, info: dict[str, int]) -> None:
        """gc's callback: the collector's wall time in the gap, and its collections."""
        if not self.on:
            return
        if phase == "start":
            self.gc_at = time.perf_counter()
        elif self.gc_at:
            self.gap["gc"] = self.gap.get("gc", 0.0) + time.perf_counter() - self.gc_at
            counted = f"gc{info['generation']}#"
            self.gap[counted] = self.gap.get(counted, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "seconds": time.monotonic() - self.started,
            "cpu": dict(self.cpu),
            "runs": dict(self.runs),
            "stalls": list(self.stalls),
            "long_runs": list(self.long_runs),
        }


class Buckets:
    """Counts of durations by bucket (`ARRIVAL_BUCKETS_S`, then one for the rest)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(ARRIVAL_BUCKETS_S) + 1)

    def note(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(ARRIVAL_BUCKETS_S, seconds)] += 1


LONG_GAP_S = 0.02  # a frame that waits through a longer gap is late


class Arrivals:
    """How long each pump read's data had waited in the kernel (SO_TIMESTAMPNS gives the
    last segment read: a lower bound when a read holds several frames), and the gaps
    between two pump rounds (a frame that arrives just after a round waits for the next):
    together, how long after its arrival a frame was read."""

    def __init__(self, recv_bytes: int) -> None:
        self.recv_bytes = recv_bytes
        self.waits, self.gaps = Buckets(), Buckets()
        self.round_at = 0.0
        self.stamped: set[int] = set()  # sockets with receive timestamps on
        self.space = socket.CMSG_SPACE(16)
        # Opened in the worker's main thread, the hub's and so the pump's.
        self.schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        self.round_sched = (0, 0)  # ns on its core, ns waiting for it, at the last round
        self.long_gaps = [0, 0.0, 0.0, 0.0]  # over LONG_GAP_S: count, s, s on core, s waiting

    def recv(self, raw: socket.socket) -> bytes:
        """web.voice.media_socket.pump_recv, timed."""
        if raw.fileno() not in self.stamped:
            raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.stamped.add(raw.fileno())
        data, ancillary, _, _ = raw.recvmsg(self.recv_bytes, self.space)
        if ancillary:  # the one control message asked for (kept cheap: it runs per read)
            level, kind, value = ancillary[0]
            if kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(value) >= 16:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                self.waits.note(time.time() - seconds - nanoseconds * 1e-9)
        return data  # type: ignore[no-any-return]

    def round(self) -> None:
        now = time.perf_counter()
        on_core, waiting, _ = os.pread(self.schedstat, 64, 0).split()
        sched = (int(on_core), int(waiting))
        if self.round_at:
            gap = now - self.round_at
            self.gaps.note(gap)
            if gap > LONG_GAP_S:
                long_gaps = self.long_gaps
                long_gaps[0] += 1
                long_gaps[1] += gap
                long_gaps[2] += (sched[0] - self.round_sched[0]) / 1e9
                long_gaps[3] += (sched[1] - self.round_sched[1]) / 1e9
        self.round_at, self.round_sched = now, sched

    def snapshot(self) -> dict[str, Any]:
        return {
            "gc": COLLECTIONS.counts,
            "buckets_s": ARRIVAL_BUCKETS_S,
            "waits": self.waits.counts,
            "gaps": self.gaps.counts,
            "long_gaps": self.long_gaps,
        }


class Collections:
    """Per generation: collections, objects they freed (cyclic garbage) and their wall
    time, total and longest. What a full collection frees is what a worker that never ran
    one would keep."""

    def __init__(self) -> None:
        self.started = 0.0
        self.counts = [[0, 0, 0.0, 0.0] for _ in range(3)]  # n, collected, seconds, max

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took = time.perf_counter() - self.started
        row = self.counts[info["generation"]]
        row[0] += 1
        row[1] += info["collected"]
        row[2] += took
        row[3] = max(row[3], took)


def census() -> dict[str, Any]:
    """The oldest generation's objects by type (what a full collection walks)."""
    counts: dict[str, int] = {}
    objects = gc.get_objects(generation=2)
    for obj in objects:
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if kind is list:  # by what they hold, the most common container by far
            name += f"[{type(obj[0]).__qualname__}]" if obj else "[] (empty)"
        counts[name] = counts.get(name, 0) + 1
    return {"total": len(objects), "by_type": counts}


COLLECTIONS = Collections()


def full_collection() -> dict[str, Any]:
    """One full collection, now: what it walked and freed, and how long it held the GIL."""
    walked = len(gc.get_objects(generation=2)) + sum(gc.get_count()[:2])
    started = time.perf_counter()
    freed = gc.collect()
    return {"walked": walked, "freed": freed, "seconds": time.perf_counter() - started}


def _write(path: str, value: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:  # dumps: json.dump's pure-Python encoder leaves cycles
        f.write(json.dumps(value))
    os.replace(path + ".tmp", path)


def _variants() -> None:
    """The other side of the benchmark's A/B switches: `--reader-reads` (the provider
    sockets read by websockets' readers, not the read ticker's pump)."""
    if os.environ.get("BENCH_READER_READS") == "1":
        from shared.providers import messages

        # web.voice.read_ticker calls it by this name when it makes the ticker
        messages.pump_reads_with = lambda pump: None  # type: ignore[assignment]


def _install(directory: str) -> None:
    import greenlet
    from gevent import monkey

    from web.voice import media_socket, read_ticker
    from web.voice.media_socket import RECV_BYTES
    from web.voice.read_ticker import ReadTicker

    arrivals, account = Arrivals(RECV_BYTES), Account() if os.environ.get("BENCH_ACCOUNT") else None
    flag, out = os.path.join(directory, "on"), os.path.join(directory, "account.json")

    asked = os.path.join(directory, "census")
    collect = os.path.join(directory, "collect")

    def control() -> None:  # an OS thread: it must not switch greenlets
        while True:
            time.sleep(0.2)
            _write(os.path.join(directory, "arrivals.json"), arrivals.snapshot())
            if os.path.exists(collect):
                _write(os.path.join(directory, "collected.json"), full_collection())
                os.unlink(collect)
            if account is None:
                continue
            if os.path.exists(asked):
                _write(os.path.join(directory, "census.json"), census())
                os.unlink(asked)
            if os.path.exists(flag):
                if not account.on:
                    account.start()
                _write(out, account.snapshot())
            else:
                account.on = False

    def round_begins() -> None:
        arrivals.round()
        if account is not None:
            account.pump_round()

    _variants()
    if os.environ.get("BENCH_UNTIMED") != "1":  # --untimed: the worker's CPU without them
        media_socket.pump_recv = arrivals.recv
        read_ticker.round_hook = round_begins
    elif account is not None:
        read_ticker.round_hook = account.pump_round
    if account is not None:
        original_round = ReadTicker._round

        def counted_round(self: ReadTicker) -> None:
            cpu = time.thread_time()
            original_round(self)
            account.pumped(time.thread_time() - cpu)

        # Compiled (shared/native.py) the class takes no patch: the pump rounds run at
        # checkpoints then count to the greenlet they ran in.
        with contextlib.suppress(TypeError):
            ReadTicker._round = counted_round  # type: ignore[method-assign]
    gc.callbacks.append(COLLECTIONS.callback)
    if account is not None:
        greenlet.settrace(account.switch)
        gc.callbacks.append(account.collection)
    monkey.get_original("threading", "Thread")(target=control, daemon=True).start()


class _Interpreted(importlib.abc.MetaPathFinder):
    """With BENCH_INTERPRETED=1: the frame path's modules from their sources even where a
    compiled build is in the tree (shared/native.py), for an A/B on the same machine."""

    def __init__(self) -> None:
        from shared.native import MODULES, module_name

        root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))
        self.sources = {module_name(path): os.path.join(root, path) for path in MODULES}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        source = self.sources.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name, source)


if os.environ.get("BENCH_INTERPRETED") == "1" and "gunicorn" in " ".join(sys.argv):
    sys.meta_path.insert(0, _Interpreted())
if DIRECTORY and "gunicorn" in " ".join(sys.argv):
    os.register_at_fork(after_in_child=functools.partial(_install, DIRECTORY))
