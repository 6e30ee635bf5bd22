"""End-to-end fixtures: a migrated database of its own, a Redis db of its own, fake
providers, the web app with real (committing) sessions, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from scripts import processes
from scripts.fakes.http_fake import HttpFake
from scripts.fakes.telnyx_api import start_fake_telnyx
from scripts.fakes.telnyx_events import TelnyxSigner
from scripts.processes import free_port
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.db.migrate import upgrade
from shared.queue.broker import build_broker
from tests.conftest import scratch_database
from web.api.app import create_app

ROOT = Path(__file__).resolve().parents[2]
E2E_REDIS_DB = 3


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_status(url: str) -> int:
    """The status of GET `url` on loopback, or 0 while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
            return int(response.status)
    except OSError:
        return 0


def start_gunicorn(
    process: str, env: dict[str, str], tmp: Path, *, ready_timeout: float = 60
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The Procfile's `web` or `voice` process on a free port, ready; stop it with
    `processes.stop`."""
    port = free_port()
    log_path = tmp / f"{process}-{port}.log"
    full_env = {
        **os.environ,
        f"{process.upper()}_PORT": str(port),
        "DATA_DIR": str(tmp / f"{process}-{port}"),
        "PYTHONPATH": str(ROOT),
        "LOG_FORMAT": "text",
        "PATH": processes.venv_path(),
        **env,
    }
    argv = processes.procfile_argv(process, full_env["PATH"])
    ready = processes.answers(port)
    server = processes.start(process, argv, full_env, log_path, ready, timeout=ready_timeout)
    return server, port, log_path


@pytest.fixture(scope="module")
def e2e_settings(settings: Settings) -> Iterator[Settings]:
    with scratch_database(settings, "e2e") as database_url:
        upgrade(database_url)
        redis_url = redis.Redis.from_url(
            settings.require_redis_url()
        ).connection_pool.connection_kwargs
        url = f"redis://{redis_url.get('host', '127.0.0.1')}:{redis_url.get('port', 6379)}/{E2E_REDIS_DB}"
        redis.Redis.from_url(url).flushdb()
        yield settings.model_copy(
            update={"database_url": database_url, "redis_url": url, "telnyx_public_key": None}
        )


@pytest.fixture(scope="module")
def e2e_engine(e2e_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(e2e_settings.require_database_url(), pool_size=3)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def e2e_sessions(e2e_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(e2e_engine)


@pytest.fixture(scope="module")
def fake_telnyx() -> Iterator[HttpFake]:
    fake = start_fake_telnyx()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def signer() -> TelnyxSigner:
    return TelnyxSigner()


@pytest.fixture(scope="module")
def provider_env(e2e_settings: Settings, fake_telnyx: HttpFake) -> dict[str, str]:
    """Environment shared by the web app under test and the worker processes."""
    return {
        "DATABASE_URL": e2e_settings.require_database_url(),
        "REDIS_URL": e2e_settings.require_redis_url(),
        "SECRET_KEY": e2e_settings.signing_key,
        "TELNYX_API_KEY": "KEY-e2e",
        "TELNYX_API_URL": fake_telnyx.url + "/v2",
        "TELNYX_CONNECTION_ID": "conn-e2e",
    }


@pytest.fixture(scope="module")
def web(
    e2e_settings: Settings,
    e2e_sessions: sessionmaker[Session],
    signer: TelnyxSigner,
    provider_env: dict[str, str],
) -> FlaskClient:
    configured = e2e_settings.model_copy(update={"telnyx_public_key": signer.public_key})
    broker = build_broker(configured)
    return create_app(configured, session_factory=e2e_sessions, broker=broker).test_client()


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def log_lines(self) -> list[dict[str, Any]]:
        return processes.json_log_lines(self.log_path)

    def stop(self) -> None:
        processes.stop(self.process, "worker")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown, no acks, no rollback sent."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def start_worker(
    provider_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**extra_env: str) -> WorkerProcess:
        port = free_port()
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            **provider_env,
            "DATA_DIR": str(tmp_path / f"worker-data-{len(started)}"),
            "WORKER_METRICS_PORT": str(port),
            "WORKER_THREADS": "2",
            "LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
            **extra_env,
        }
        process = processes.start(
            "worker",
            [sys.executable, "-m", "workers.main"],
            env,
            log_path,
            processes.logged(log_path, "Worker process is ready"),
            timeout=30,
        )
        worker = WorkerProcess(process, log_path, port)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
