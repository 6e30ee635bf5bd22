"""What the socket micro-benchmarks (`media_read`, `provider_read`, `provider_send`) share:
one greenlet per connection counting what it receives, this process's CPU per message over
a window, the websockets server in a process of its own, and alternating runs per mode."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import gevent


def read_until_closed(
    receive: Callable[[], object], close: Callable[[], None], received: list[int]
) -> None:
    """Count each `receive()` in `received[0]` until it raises (the peer closed: done)."""
    try:
        while True:
            receive()
            received[0] += 1
    except Exception:  # the other end closed the connection
        return
    finally:
        close()


def cpu_us_per_message(received: list[int], settle_s: float, window_s: float) -> float:
    """After `settle_s`, µs of this process's CPU per message counted over `window_s`."""
    gevent.sleep(settle_s)
    messages, cpu = received[0], time.process_time()
    gevent.sleep(window_s)
    messages, cpu = received[0] - messages, time.process_time() - cpu
    return 1e6 * cpu / max(1, messages)


def server_port(module: str, seconds: float) -> tuple[subprocess.Popen[str], int]:
    """`python -m module --serve seconds` (its CPU not this process's) and the port it
    printed."""
    server = subprocess.Popen(
        [sys.executable, "-m", module, "--serve", str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def compare(
    modes: Sequence[str],
    run: Callable[[int, float, str], float],
    what: str,
    serve: Callable[[float], None],
) -> None:
    """A socket micro-benchmark's entry point. With `--serve S` (how `server_port` starts
    this module's server process): `serve(S)`. Otherwise alternate `run(connections,
    seconds, mode)` over `modes` for `--rounds` rounds (the VM's speed drifts) and print
    each mode's figures, their mean and the ratio of each mode's to the first's."""
    if "--serve" in sys.argv:
        serve(float(sys.argv[-1]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            runs[mode].append(run(args.connections, args.seconds, mode))
    means = {mode: sum(values) / len(values) for mode, values in runs.items()}
    print(f"{args.connections} connections, {what}:")
    for mode, values in runs.items():
        print(f"  {mode}: {', '.join(f'{us:.1f}' for us in values)} (mean {means[mode]:.1f})")
    for mode in modes[1:]:
        print(f"  {mode} / {modes[0]}: {means[mode] / means[modes[0]]:.2f}")
