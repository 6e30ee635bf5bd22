"""The module Dramatiq's worker imports: logging, tracing, the broker, then the actors."""

import dramatiq

from shared.config import load_settings
from shared.db.engine import make_engine, make_session_factory
from shared.observability.logging import setup_logging
from shared.observability.tracing import setup_tracing
from shared.queue.broker import build_broker
from workers import runtime
from workers.middleware import DatabaseSession
from workers.ops_server import WorkerMetrics

settings = load_settings()
setup_logging("worker", fmt=settings.log_format, level=settings.log_level)
setup_tracing("worker", settings)
session_factory = make_session_factory(
    make_engine(settings.require_database_url(), pool_size=settings.worker_threads)
)
broker = build_broker(settings, extra=[WorkerMetrics(), DatabaseSession(session_factory)])
dramatiq.set_broker(broker)
runtime.configure(settings, broker)

import workers.actors  # noqa: E402,F401  - registers the actors on the broker set above
