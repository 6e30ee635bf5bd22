"""Our own processes (web, voice, worker) started by a benchmark or an end-to-end test.

Each runs in a process group of its own (so Ctrl-C reaches only the caller, which stops
it in order), logs to a file, is waited for until it says it is ready, and is stopped
group and all: SIGTERM for a graceful stop, then SIGKILL for whatever is left.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from honcho.environ import parse_procfile

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def venv_path() -> str:
    """PATH with this interpreter's bin directory first (gunicorn, dramatiq live there)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def procfile_argv(name: str, path: str) -> list[str]:
    """The Procfile's command for `name`, its executable resolved on `path`."""
    argv = shlex.split(parse_procfile((ROOT / "Procfile").read_text()).processes[name])
    executable = shutil.which(argv[0], path=path)
    if executable is None:
        raise RuntimeError(f"{argv[0]} is not installed in the venv")
    return [executable, *argv[1:]]


def postmaster_pid(data_dir: Path) -> int | None:
    """The embedded PostgreSQL's pid under DATA_DIR, if it runs there."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    return None


def json_log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a process's log (LOG_FORMAT=json), skipping anything else."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


def http_status(port: int, path: str) -> int:
    """Status of GET `path` on loopback; OSError while nothing listens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def answers(port: int, path: str = "/readyz") -> Callable[[], bool]:
    """Ready when GET `path` answers 200."""

    def ready() -> bool:
        try:
            return http_status(port, path) == 200
        except OSError:
            return False

    return ready


def logged(log_path: Path, text: str) -> Callable[[], bool]:
    """Ready once `text` appears in the log."""
    return lambda: text in log_path.read_text(errors="replace")


def start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    timeout: float = 60.0,
    poll: float = 0.2,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own group, logging to `log_path`; return once `ready()`. If it
    exits or is not ready in time, it is stopped and RuntimeError carries its log's end."""
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            stop(proc, name)
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{tail(log_path)}")
        time.sleep(poll)
    return proc


def stop(proc: subprocess.Popen[bytes], name: str, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the group (gunicorn and Dramatiq stop gracefully), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time: killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def running(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    timeout: float = 60.0,
    poll: float = 0.2,
    stop_timeout: float = STOP_TIMEOUT_S,
) -> Iterator[subprocess.Popen[bytes]]:
    """`start()` for the length of a `with` block, stopped on the way out."""
    proc = start(name, argv, env, log_path, ready, timeout=timeout, poll=poll)
    try:
        yield proc
    finally:
        stop(proc, name, stop_timeout)
