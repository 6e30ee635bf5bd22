"""One logger set-up per process: JSON (or text) lines carrying the request/job id."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.orjson import OrjsonFormatter

# Libraries that log at INFO on a call's path: httpx writes a line for every request (each
# LLM reply, each sentiment score), the voice process's busiest log source by far. Their
# warnings still show; LOG_LEVEL=DEBUG shows everything.
QUIETER = {"httpx": logging.WARNING, "httpcore": logging.WARNING}

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
    debugging = root.level <= logging.DEBUG
    for name, floor in QUIETER.items():  # LOG_LEVEL=DEBUG shows them all
        logging.getLogger(name).setLevel(logging.NOTSET if debugging else floor)
    # No thread name in a record (no format here shows it): under gevent, asking for it
    # made every greenlet that logged a `_DummyThread` of its own (~10 objects each for
    # the garbage collector, ~145 alive at 100 calls in the voice process).
    logging.logThreads = False
