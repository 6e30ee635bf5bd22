"""One logger set-up per process: JSON (or text) lines carrying the request/job id."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.orjson import OrjsonFormatter

# Greenlet- and thread-local under gevent, so concurrent requests keep their own id.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class _ContextFilter(logging.Filter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.process_name = self.process
        return True


def setup_logging(process: str, *, fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_ContextFilter(process))
    if fmt == "json":
        handler.setFormatter(
            OrjsonFormatter(  # orjson: a request's log line is on every request's path
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(process_name)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
