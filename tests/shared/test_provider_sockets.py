"""The provider SDKs' sockets (websockets' sync client) waiting on the voice process's read
ticker (`wait_provider_sockets`), in a gevent interpreter of their own: every message comes
through in order, a connection closed while its reader waits ends that reader, and a closed
connection leaves nothing registered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import run_fresh

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket
import time

import gevent
from websockets.server import ServerProtocol
from websockets.sync import connection as websockets_connection
from websockets.sync.client import connect

from web.voice.read_ticker import read_ticker, wait_provider_sockets

MESSAGES = 30
patched_before = websockets_connection.selectors.DefaultSelector.__module__
ticker = read_ticker()
wait_provider_sockets(ticker)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]


def provider(answer_close):
    # One connection: the handshake, MESSAGES binary messages 2 ms apart, then either
    # the closing handshake as a server does it, or silence (a provider that hung).
    conn, _ = listener.accept()
    protocol = ServerProtocol()
    while not (events := protocol.events_received()):
        protocol.receive_data(conn.recv(65536))
    protocol.send_response(protocol.accept(events[0]))
    conn.sendall(b"".join(protocol.data_to_send()))
    for n in range(MESSAGES):
        protocol.send_binary(b"%d" % n)
        conn.sendall(b"".join(protocol.data_to_send()))
        gevent.sleep(0.002)
    if answer_close:
        while data := conn.recv(65536):
            protocol.receive_data(data)
            out = protocol.data_to_send()
            conn.sendall(b"".join(out))  # the close frame echoed
            if out and out[-1] == b"":  # then the server closes the TCP connection
                break
    else:
        gevent.sleep(5)
    conn.close()


def client(got):
    ws = connect(f"ws://127.0.0.1:{port}", close_timeout=0.3, legacy=True)
    for _ in range(MESSAGES):
        got.append(ws.recv().decode())
    watched = ticker.watched  # the socket and the reader's shutdown watcher
    started = time.monotonic()
    ws.close()
    ws.recv_events_thread.join(5)
    return watched, time.monotonic() - started, ws.recv_events_thread.is_alive()


results = {}
for name, answer_close in (("answers", True), ("hung", False)):
    server = gevent.spawn(provider, answer_close)
    got = []
    watched_before = ticker.watched
    watched, closing_s, reader_alive = gevent.spawn(client, got).get(timeout=10)
    results[name] = {
        "got": got,
        "watched": watched,
        "closing_s": closing_s,
        "reader_alive": reader_alive,
        "watched_before": watched_before,
        "watched_after": ticker.watched,
    }
    server.kill()

print(json.dumps({
    "patched_before": patched_before,
    "selector": type(websockets_connection.selectors.DefaultSelector()).__name__,
    "results": results,
    "timer_active_after": ticker._timer.active,
}))
"""


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return json.loads(run_fresh(SCRIPT))  # type: ignore[no-any-return]


def test_websockets_sync_connections_wait_on_the_ticker(result: dict[str, Any]) -> None:
    # Before: gevent's selector (websockets still waits through `selectors`, or this
    # optimisation would silently be gone after an upgrade); after: the ticker's.
    assert result["patched_before"] == "gevent.selectors"
    assert result["selector"] == "TickerSelector"
    for outcome in result["results"].values():
        assert outcome["watched"] == 2  # the socket and its reader's shutdown watcher


def test_every_message_arrives_in_order(result: dict[str, Any]) -> None:
    for outcome in result["results"].values():
        assert outcome["got"] == [str(n) for n in range(30)]


def test_a_connection_closed_while_its_reader_waits_ends_that_reader(
    result: dict[str, Any],
) -> None:
    answered, hung = result["results"]["answers"], result["results"]["hung"]
    assert answered["closing_s"] < 0.3 and not answered["reader_alive"]
    # The provider never answers the close: after close_timeout the socket is closed and
    # the shutdown watcher wakes the reader's select().
    assert 0.25 < hung["closing_s"] < 2 and not hung["reader_alive"]


def test_a_closed_connection_leaves_nothing_registered(result: dict[str, Any]) -> None:
    for outcome in result["results"].values():
        assert outcome["watched_before"] == 0
        assert outcome["watched_after"] == 0
    assert result["timer_active_after"] is False
