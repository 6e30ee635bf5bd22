"""Where the voice worker's CPU goes, from `perf` with DWARF stacks: each sample's native
stack is put in the first area of `AREAS` whose function it passes through, and within an
area in the first of its parts.

Why perf and not py-spy: with the frame path compiled (shared/native.py) py-spy sees the
pump as the hub's `loop.run()`, and in a gevent process it charges a quarter of the samples
to that line anyway (scripts/bench/worker_hooks). perf unwinds the compiled modules' C
functions (`CPyDef_<module>___<Class>___<method>`), the interpreter, gevent, greenlet and
the kernel alike; greenlet copies each greenlet's stack onto the C stack above the switch
that started it, so a reader woken from the hub's tick unwinds through that tick. What it
cannot tell apart is interpreted Python (it is all `_PyEval_EvalFrameDefault`): the replies
are one area here, broken down by py-spy (`--profile-calls`).

Needs `perf` (Debian's linux-perf) and the compiled build; prints why not otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

# (area, a function its samples pass through, [(part, a function below it), ...]);
# the first match wins, so the pump's rounds run at a checkpoint of a reply count as the pump.
AREAS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "the pump's rounds (every call's frames in, playout out)",
        "ReadTicker____round",
        [
            ("callers' frames: the socket read (recv)", "MediaSocket____pump_recv"),
            ("callers' frames: delayed-ACK setsockopt", "sock_setsockopt"),
            (
                "callers' audio to Deepgram (level, batching, framing, send)",
                "DeepgramStream___send",
            ),
            ("callers' frames: Telnyx JSON + base64", "telnyx_media___parse"),
            ("callers' frames: split, unmask, lag, reorder", "MediaSocket____pump_read"),
            ("agent audio out: playout steps (JSON, base64, send)", "ReadTicker____run_steps"),
            # Interpreted right under the round: shared.providers.messages._PumpedReads.
            (
                "provider messages: Deepgram results, Cartesia audio (interpreted)",
                "_PyEval_EvalFrameDefault",
            ),
            ("epoll of the pumped sockets", "epoll"),
        ],
    ),
    (
        "provider readers (websockets' loop: what the pump hands back), woken by the tick",
        "_Watched___ready",
        [
            ("Cartesia audio into the playout (a paced chunk may go out)", "Playout___add"),
            ("socket reads", "sock_recv"),
        ],
    ),
    ("the tick's epoll for the readers", "ReadTicker____tick", []),
    (
        "replies (Groq over httpx, sentences, Cartesia pushes; interpreted)",
        "CallLoop____run_reply",
        [("socket sends", "sock_send"), ("socket reads", "sock_recv")],
    ),
    ("garbage collection", "gc_collect_main", []),
    ("gevent's event loop (libev)", "ev_run", []),
]


def available() -> str | None:
    """Why a breakdown cannot be taken here, or None."""
    from shared import native

    if shutil.which("perf") is None:
        return "perf not installed (Debian: apt install linux-perf)"
    if not native.compiled():
        return "the frame path is not compiled (scripts/build_native.py): nothing to tell apart"
    return None


def record(pid: int, seconds: float, cpu: int | None = None) -> list[str]:
    """perf the process `pid` for `seconds` (perf itself pinned to `cpu`); the breakdown."""
    if (why := available()) is not None:
        return [f"  perf breakdown: {why}"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        command = [*pin, "perf", "record", "-q", "-e", "cpu-clock", "-F", "499"]
        command += ["--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(data)]
        command += ["--", "sleep", str(seconds)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not data.exists():
            return [f"  perf record failed ({done.returncode}): {done.stderr.strip()[-300:]}"]
        script = subprocess.run(
            [*pin, "perf", "script", "-i", str(data), "-F", "ip,sym"],
            capture_output=True,
            text=True,
            check=False,
        )
    return breakdown(script.stdout, seconds)


def stacks(text: str) -> list[list[str]]:
    """`perf script -F ip,sym` output: one list of function names per sample, leaf first
    (each line is an address and a name)."""
    samples = []
    for block in text.split("\n\n"):
        names = [line.split(None, 1)[-1] for line in block.splitlines() if line.strip()]
        if names:
            samples.append(names)
    return samples


def classify(stack: list[str]) -> tuple[str, str | None]:
    """The area of one sample, and its part there (None: the area's rest)."""
    for area, through, parts in AREAS:
        at = next((i for i, name in enumerate(stack) if through in name), None)
        if at is None:
            continue
        below = stack[:at]
        part = next((p for p, marker in parts if any(marker in n for n in below)), None)
        return area, part
    return "the rest (greenlet starts, workers, the turn writer, ...)", None


def breakdown(text: str, seconds: float) -> list[str]:
    samples = stacks(text)
    if not samples:
        return ["  perf breakdown: no samples"]
    areas: Counter[str] = Counter()
    parts: Counter[tuple[str, str]] = Counter()
    for stack in samples:
        area, part = classify(stack)
        areas[area] += 1
        if part is not None:
            parts[(area, part)] += 1
    total = len(samples)
    lines = [
        f"  where the worker's CPU went (perf, DWARF stacks, {total} samples in {seconds:.0f} s), "
        "% of the worker's own time:"
    ]
    for area, count in areas.most_common():
        lines.append(f"    {100 * count / total:5.1f}%  {area}")
        shown = 0
        for (of, part), n in parts.most_common():
            if of == area:
                lines.append(f"      {100 * n / total:5.1f}%  {part}")
                shown += n
        if shown and count > shown:
            lines.append(f"      {100 * (count - shown) / total:5.1f}%  the rest of it")
    return lines
