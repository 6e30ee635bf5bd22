"""The process log set-up: what a call's path writes, and what it does not."""

from __future__ import annotations

import _thread
import json
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest

from shared.observability.logging import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    logging.getLogger().handlers.clear()
    logging.logThreads = True
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def one_request_logged_at(level: str) -> None:
    """The voice process's log set-up at `level`, then one httpx request (to a mock)."""
    setup_logging("voice", fmt="json", level=level)
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with httpx.Client(transport=transport, base_url="http://provider.test") as client:
        client.get("/v1/reply")


def test_httpx_request_lines_are_not_logged_but_its_warnings_and_ours_are(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    one_request_logged_at("INFO")
    logging.getLogger("httpx").warning("pool exhausted")
    logging.getLogger("shared.voice").info("caller barged in")

    messages = [line["message"] for line in json_lines(capsys.readouterr().out)]
    assert messages == ["pool exhausted", "caller barged in"]


def test_debug_level_shows_every_request(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    one_request_logged_at("DEBUG")

    lines = json_lines(capsys.readouterr().out)
    assert any(line["logger"] == "httpx" and "/v1/reply" in str(line["message"]) for line in lines)


def test_a_log_line_does_not_register_a_thread_for_its_caller(restore_logging: None) -> None:
    """Under gevent every greenlet that asked for its thread got a `_DummyThread`; a plain
    thread that is not from `threading` shows the same: it is registered when it logs."""
    setup_logging("voice", fmt="json", level="INFO")
    registered: list[bool] = []

    done = threading.Event()

    def log_from_a_foreign_thread() -> None:
        logging.getLogger("shared.voice").info("turn stored")
        registered.append(any(t.ident == threading.get_ident() for t in threading.enumerate()))
        done.set()

    _thread.start_new_thread(log_from_a_foreign_thread, ())
    assert done.wait(5)
    assert registered == [False]
