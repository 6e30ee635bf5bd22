"""`scripts/run`'s stack: embedded servers, migrations, three processes; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from tests.e2e.conftest import ROOT, free_port, http_status, wait_for


def test_the_stack_starts_embedded_servers_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    ports = {"WEB_PORT": free_port(), "VOICE_PORT": free_port(), "WORKER_METRICS_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {k: str(v) for k, v in ports.items()}, DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT)
    )
    stack = subprocess.Popen(
        [sys.executable, "-m", "scripts.devstack", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{ports['WEB_PORT']}/readyz") == 200,
            90,
            "web /readyz",
        )
        assert http_status(f"http://127.0.0.1:{ports['VOICE_PORT']}/healthz") == 200
        # Real gunicorn workers (multiprocess metrics), not the test client: requests show up.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ports['WEB_PORT']}/metrics", timeout=5
        ) as r:
            assert 'route="/readyz",status="200"' in r.read().decode()
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{ports['WORKER_METRICS_PORT']}/healthz") == 200,
            30,
            "worker /healthz",
        )
        descendants = psutil.Process(stack.pid).children(recursive=True)
        postgres = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or [])
            and "postgres" in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "embedded PostgreSQL should run under DATA_DIR"
        stack.send_signal(signal.SIGINT)
        output = stack.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
    assert "Switchboard" in output
    survivors = [
        p
        for p in [*descendants, *postgres]
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert survivors == [], [p.info if hasattr(p, "info") else p.pid for p in survivors]
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
