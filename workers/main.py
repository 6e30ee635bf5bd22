"""Entry point of the `worker` process: prepare the metrics directory, then run Dramatiq.

Dramatiq's Prometheus middleware reads its settings from the environment when it is
imported, so they are set here, before the worker processes start and import them.
"""

from __future__ import annotations

import os
import shutil
import sys

from shared.config import load_settings


def main() -> None:
    settings = load_settings()
    metrics_dir = settings.data_dir.resolve() / "prometheus" / "worker"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["dramatiq_prom_db"] = str(metrics_dir)
    # prometheus_client picks file-backed (multiprocess) values when it is first imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["dramatiq_prom_host"] = settings.bind_host
    os.environ["dramatiq_prom_port"] = str(settings.worker_metrics_port)
    # Poll idle queues every 100 ms, not 1 s: answering a ringing call goes through here.
    os.environ.setdefault("dramatiq_worker_timeout", "100")
    args = [sys.executable, "-m", "dramatiq", "workers.app"]
    args += [
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(settings.worker_threads),
    ]
    os.execv(sys.executable, args)  # noqa: S606 - replaces this process, fixed argv


if __name__ == "__main__":
    main()
