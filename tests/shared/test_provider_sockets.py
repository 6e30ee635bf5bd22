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


# A provider over plain TCP or TLS (argv[1]) for the scripts below: `accept()` takes one
# websocket connection and answers its handshake.
PROVIDER_PRELUDE = r"""
from gevent import monkey
monkey.patch_all()

import datetime
import json
import socket
import ssl
import sys
import tempfile
import time
from collections import deque

import gevent
import greenlet
from gevent.event import Event
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.server import ServerProtocol
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

TLS = sys.argv[1] == "tls"


def tls_contexts():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
        f.write(pem + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(f.name)
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client


server_tls, client_tls = tls_contexts() if TLS else (None, None)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]


def accept():
    conn, _ = listener.accept()
    if TLS:
        conn = server_tls.wrap_socket(conn, server_side=True)
    protocol = ServerProtocol(max_size=None)
    while not (events := protocol.events_received()):
        protocol.receive_data(conn.recv(65536))
    protocol.send_response(protocol.accept(events[0]))
    conn.sendall(b"".join(protocol.data_to_send()))
    return conn, protocol
"""


# `send_binary_now` (the read ticker's pump writing Deepgram's audio) on websockets' sync
# client over gevent's sockets, plain and TLS. The provider reads nothing for its first
# 0.3 s and the client's send buffer is 64 KB, so after a few small messages the socket
# takes only part of a 16 KB frame, then nothing: a call that took part of a frame hands the rest to a worker with
# the connection's lock held; one that took nothing returns False and the message goes to
# a sender greenlet (as DeepgramStream queues it). No call may wait, and the provider must
# get every message whole and in order.
SEND_NOW_SCRIPT = (
    PROVIDER_PRELUDE
    + r"""
from shared.providers.messages import nonblocking_writer, send_binary, send_binary_now

MESSAGES, SIZE = 40, 16 * 1024



def provider():
    conn, protocol = accept()
    gevent.sleep(0.3)  # not reading: the client's buffers fill
    got = []
    while len(got) < MESSAGES:
        data = conn.recv(65536)
        if not data:
            break
        protocol.receive_data(data)
        got += [bytes(e.data) for e in protocol.events_received() if isinstance(e, Frame)]
    return got


served = gevent.spawn(provider)
url = f"{'wss' if TLS else 'ws'}://localhost:{port}"
ws = connect(url, ssl=client_tls, max_size=None, open_timeout=5) if TLS else connect(url)
ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
writer = nonblocking_writer(ws.socket)

outbox, ready = deque(), Event()


def sender():
    while True:
        ready.wait()
        ready.clear()
        while outbox:
            send_binary(ws, outbox.popleft())


gevent.spawn(sender)
switches = []
greenlet.settrace(lambda event, args: switches.append(event))
ws.protocol_mutex.acquire()  # a sender greenlet is writing: refused at once, no switch
refused_while_locked = not send_binary_now(ws, b"never", writer)
greenlet.settrace(None)
ws.protocol_mutex.release()
messages = [bytes([n]) * (200 if n < 5 else SIZE) for n in range(MESSAGES)]
outcomes, longest = [], 0.0
for message in messages:
    started = time.perf_counter()
    if outbox or not send_binary_now(ws, message, writer):
        outbox.append(message)
        ready.set()
        outcomes.append("queued")
    else:
        outcomes.append("handed off" if ws.protocol_mutex.locked() else "sent")
    longest = max(longest, time.perf_counter() - started)
    gevent.sleep(0)  # the sender and hand-off workers get their turn, as between frames
got = served.get(timeout=10)
print(json.dumps({
    "tls": writer.tls,
    "outcomes": {kind: outcomes.count(kind) for kind in ("sent", "handed off", "queued")},
    "longest_ms": 1000 * longest,
    "in_order": got == messages,
    "got": len(got),
    "refused_while_locked": refused_while_locked,
    "switches_while_refused": len(switches),
}))
"""
)


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_a_send_that_must_not_wait_never_does_and_every_message_arrives_whole(
    transport: str,
) -> None:
    sent = json.loads(run_fresh(SEND_NOW_SCRIPT, transport))
    assert sent["tls"] is (transport == "tls")
    assert sent["got"] == 40 and sent["in_order"]
    assert sent["outcomes"]["sent"] >= 1  # written at once while the socket took it
    assert sent["outcomes"]["handed off"] >= 1  # part taken: a worker wrote the rest
    assert sent["outcomes"]["queued"] >= 1  # nothing taken: the sender wrote it
    assert sent["longest_ms"] < 100  # nothing waited for the provider (it read after 300)
    # The lock held elsewhere: refused without a switch (a patched Lock's failed
    # non-blocking acquire yields to the hub, which the pump must never do).
    assert sent["refused_while_locked"] and sent["switches_while_refused"] == 0


# Messages read by the read ticker's pump (`deliver_messages` in the voice process,
# `_PumpedReads`), plain and TLS: whole data frames are handled in the pump; a ping, a
# fragmented message, a frame larger than one read, a frame split across two writes and the
# close go through websockets' own loop in between, and nothing is lost, reordered or left
# registered. Then a connection that we close while the pump reads it.
PUMPED_SCRIPT = (
    PROVIDER_PRELUDE
    + r"""
from shared.providers.messages import deliver_messages, delivered_by_pump
from web.voice.read_ticker import read_ticker, wait_provider_sockets

ticker = read_ticker()
wait_provider_sockets(ticker)
LARGE = bytes(range(256)) * 1200  # 300 KB: more than one read


def flush(conn, protocol):
    conn.sendall(b"".join(protocol.data_to_send()))


def read_until(conn, protocol, wanted):
    # The client's frames until one `wanted(frame)`; None at the end of the stream.
    while data := conn.recv(65536):
        protocol.receive_data(data)
        flush(conn, protocol)  # the close frame echoed
        for event in protocol.events_received():
            if isinstance(event, Frame) and wanted(event):
                return event
    return None


def provider():
    conn, protocol = accept()
    for n in range(10):  # each on its own, ten ticks apart: the pump's to read
        protocol.send_binary(b"%d" % n)
        flush(conn, protocol)
        gevent.sleep(0.02)
    protocol.send_ping(b"p1")
    protocol.send_text(b"frag-", fin=False)
    protocol.send_continuation(b"ment", fin=True)
    protocol.send_binary(LARGE)
    flush(conn, protocol)
    gevent.sleep(0.01)
    protocol.send_binary(b"whole")
    protocol.send_binary(b"split-in-two")
    out = b"".join(protocol.data_to_send())
    cut = out.index(b"split") + 3
    conn.sendall(out[:cut])
    gevent.sleep(0.02)
    conn.sendall(out[cut:])
    for n in range(10, 20):
        protocol.send_text(b"%d" % n)
        flush(conn, protocol)
        gevent.sleep(0.02)
    pong = read_until(conn, protocol, lambda f: f.opcode is Opcode.PONG)
    protocol.send_close(1000, "bye")
    flush(conn, protocol)
    read_until(conn, protocol, lambda f: f.opcode is Opcode.CLOSE)
    conn.close()
    return pong is not None and bytes(pong.data) == b"p1"


def quiet_provider():
    conn, protocol = accept()
    for n in range(5):
        protocol.send_binary(b"%d" % n)
        flush(conn, protocol)
    read_until(conn, protocol, lambda f: f.opcode is Opcode.CLOSE)
    conn.close()


def run(serve, close_first):
    served = gevent.spawn(serve)
    url = f"{'wss' if TLS else 'ws'}://localhost:{port}"
    ws = connect(url, ssl=client_tls, max_size=None, close_timeout=1, legacy=True)
    got, by_pump, ended, end = [], [], Event(), {}

    def on_message(data, text):
        got.append([data[:12].decode("latin-1") if len(data) < 100 else f"{len(data)} bytes"
                    f" {'same' if data == LARGE else 'different'}", text])
        by_pump.append(delivered_by_pump())

    def on_end(reason):
        end["reason"] = type(reason).__name__
        ended.set()

    deliver_messages(ws, on_message, on_end)
    if close_first:
        while len(got) < 5:
            gevent.sleep(0.01)
        started = time.monotonic()
        ws.close()
    else:
        started = time.monotonic()
    ended.wait(10)
    ws.recv_events_thread.join(5)
    return {
        "got": got,
        "by_pump": by_pump,
        "pong": served.get(timeout=5),
        "ended": end.get("reason"),
        "reader_alive": ws.recv_events_thread.is_alive(),
        "closing_s": time.monotonic() - started,
    }


results = {"provider_closes": run(provider, False), "we_close": run(quiet_provider, True)}
results["watched_after"] = ticker.watched
results["pumped_reads_after"] = len(ticker._selector_pumps)
print(json.dumps(results))
"""
)


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_messages_read_in_the_pump_arrive_whole_in_order_with_websockets_doing_the_rest(
    transport: str,
) -> None:
    result = json.loads(run_fresh(PUMPED_SCRIPT, transport))
    closed_by_provider, closed_by_us = result["provider_closes"], result["we_close"]
    assert closed_by_provider["got"] == [
        *[[str(n), False] for n in range(10)],
        ["frag-ment", True],
        ["307200 bytes same", False],
        ["whole", False],
        ["split-in-two", False],
        *[[str(n), True] for n in range(10, 20)],
    ]
    # The messages that came on their own were handled in the pump (but for one or two
    # that may come before `deliver_messages`), and the ping was answered.
    assert sum(closed_by_provider["by_pump"]) >= 15
    assert closed_by_provider["pong"] is True
    assert closed_by_provider["ended"] == "ConnectionClosedOK"
    assert not closed_by_provider["reader_alive"]
    assert closed_by_us["got"] == [[str(n), False] for n in range(5)]
    assert closed_by_us["ended"] == "ConnectionClosedOK"
    assert not closed_by_us["reader_alive"] and closed_by_us["closing_s"] < 1
    assert result["watched_after"] == 0 and result["pumped_reads_after"] == 0
