"""gunicorn settings shared by the web and voice processes (gevent workers).

Each worker writes Prometheus samples to a per-process directory under DATA_DIR, which
`/metrics` aggregates; the directory is emptied when the master starts.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from shared.config import load_settings


def configure(namespace: dict[str, Any], process: str, port: int, workers: int) -> None:
    settings = load_settings()
    metrics_dir = settings.data_dir.resolve() / "prometheus" / process
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    namespace.update(
        bind=f"{settings.bind_host}:{port}",
        workers=workers,
        worker_class="gevent",
        worker_connections=1000,
        graceful_timeout=10,
        timeout=30,
        accesslog=None,
        child_exit=_child_exit,
        # One control socket per process: the default path is shared by all gunicorns.
        control_socket=str(settings.data_dir.resolve() / f"gunicorn-{process}.ctl"),
    )


def _child_exit(server: Any, worker: Any) -> None:
    # Imported here, not at the top: prometheus_client chooses file-backed (multiprocess)
    # values when first imported, so it must not load before configure() sets the dir.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
