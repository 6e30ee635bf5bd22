"""The voice benchmark's per-greenlet CPU account (`--account-calls`), loaded into the voice
process through PYTHONPATH by the benchmark only.

Why not py-spy alone: in a gevent process it charged a quarter of the worker's samples to
the hub's `loop.run()` line, where perf (with DWARF stacks) finds only ~7 % of the worker's
time in C below the event loop outside the interpreter. Here `greenlet.settrace` adds up
the thread's CPU time between switches for each greenlet, labelled by the function it runs.
A switch costs a few µs more while it is on (off, a trace call that returns at once).

On while the file `GREENLET_ACCOUNT_DIR/on` exists; the totals so far are written to
`GREENLET_ACCOUNT_DIR/account.json` every 0.2 s while on.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import weakref

DIRECTORY = os.environ.get("GREENLET_ACCOUNT_DIR")


def _install(directory: str) -> None:
    import greenlet
    from gevent import monkey

    flag, out = os.path.join(directory, "on"), os.path.join(directory, "account.json")
    cpu: dict[str, float] = {}
    runs: dict[str, int] = {}
    # Weakly keyed: a dead greenlet's id() is soon another's.
    labels: weakref.WeakKeyDictionary[greenlet.greenlet, str] = weakref.WeakKeyDictionary()
    on = [False]
    last: list[float | None] = [None]  # the main thread's CPU time at the last switch
    started = [0.0]

    def label(g: greenlet.greenlet) -> str:
        """What `g` runs. Taken when it is first switched to: gevent drops a Greenlet's
        `_run` once it returns, before its last switch."""
        found = labels.get(g)
        if found is None:
            run = getattr(g, "_run", None) or getattr(g, "run", None)
            run = getattr(run, "func", run)  # a functools.partial
            name = getattr(run, "__qualname__", type(g).__name__)
            if type(g).__name__ == "Hub":
                name = "hub"
            found = labels[g] = f"{getattr(run, '__module__', '') or ''}.{name}"
        return found

    def trace(event: str, args: tuple[greenlet.greenlet, greenlet.greenlet]) -> None:
        if not on[0] or event not in ("switch", "throw"):
            return
        now = time.thread_time()
        label(args[1])
        if last[0] is not None:
            key = label(args[0])
            cpu[key] = cpu.get(key, 0.0) + now - last[0]
            runs[key] = runs.get(key, 0) + 1
        last[0] = now

    def control() -> None:  # an OS thread: it must not switch greenlets
        while True:
            time.sleep(0.2)
            if os.path.exists(flag):
                if not on[0]:
                    cpu.clear()
                    runs.clear()
                    last[0], started[0], on[0] = None, time.monotonic(), True
                seconds = time.monotonic() - started[0]
                with open(out + ".tmp", "w") as f:
                    json.dump({"seconds": seconds, "cpu": dict(cpu), "runs": dict(runs)}, f)
                os.replace(out + ".tmp", out)
            else:
                on[0] = False

    greenlet.settrace(trace)
    monkey.get_original("threading", "Thread")(target=control, daemon=True).start()


if DIRECTORY and "gunicorn" in " ".join(sys.argv):
    os.register_at_fork(after_in_child=functools.partial(_install, DIRECTORY))
