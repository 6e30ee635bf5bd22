"""shared/providers/messages.py: the providers' websocket messages below the SDKs, against
a real websockets server (the Deepgram and Cartesia SDKs' transport)."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve

from shared.providers.messages import deliver_messages, send_binary
from tests.conftest import run_fresh


@contextmanager
def server(handler: Callable[[ServerConnection], None]) -> Iterator[ClientConnection]:
    """A websockets server running `handler` per connection, and a client connected to it."""
    with serve(handler, "127.0.0.1", 0, compression=None) as running:
        threading.Thread(target=running.serve_forever, daemon=True).start()
        port = running.socket.getsockname()[1]
        with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            yield ws


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self.ends: list[BaseException] = []
        self.ended = threading.Event()

    def on_message(self, data: bytes, text: bool) -> None:
        self.messages.append((data, text))

    def on_end(self, reason: BaseException) -> None:
        self.ends.append(reason)
        self.ended.set()


def test_send_binary_frames_whole_messages_and_refuses_a_closed_connection() -> None:
    received: list[bytes | str] = []
    messages = [bytes([n]) * (100 + 1000 * n) for n in range(70)]  # 7- and 16-bit lengths

    with server(received.extend) as ws:
        for message in messages:
            send_binary(ws, message)
        ws.ping().wait(5)  # the reader's pong goes through the same lock
        send_binary(ws, b"last")
    with pytest.raises(ConnectionClosed):
        send_binary(ws, b"after close")
    deadline = time.monotonic() + 5
    while len(received) < len(messages) + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received == [*messages, b"last"]


def test_messages_queued_before_and_sent_after_are_delivered_in_order_then_the_end() -> None:
    early = [f"early {n}" for n in range(20)]  # more than websockets queues before pausing

    def script(ws: ServerConnection) -> None:
        for text in early:
            ws.send(text)
        ws.send(b"early binary")
        ws.recv()  # the client has taken the messages over
        ws.send(["frag", "mented"])  # one message in two frames
        ws.send(b"late")
        ws.close()

    received = Received()
    with server(script) as ws:
        time.sleep(0.2)  # the early messages wait in websockets' assembler
        deliver_messages(ws, received.on_message, received.on_end)
        ws.send("go")
        assert received.ended.wait(5)
        with pytest.raises(RuntimeError):
            ws.recv()  # its messages go to the handler now
    assert received.messages == [
        *[(text.encode(), True) for text in early],
        (b"early binary", False),
        (b"fragmented", True),
        (b"late", False),
    ]
    (end,) = received.ends
    assert isinstance(end, ConnectionClosedOK)


def test_a_handler_that_raises_ends_the_delivery_with_its_error_and_may_close() -> None:
    def script(ws: ServerConnection) -> None:
        ws.recv()
        for n in range(3):
            ws.send(f"message {n}")
        ws.recv()  # until the client closes

    seen: list[bytes] = []
    ends: list[BaseException] = []
    ended = threading.Event()

    def on_message(data: bytes, text: bool) -> None:
        seen.append(data)
        raise ValueError("bad message")

    with server(script) as ws:

        def on_end(reason: BaseException) -> None:
            ends.append(reason)
            ws.close()  # in a worker of its own: no lock of the connection's is held
            ended.set()

        deliver_messages(ws, on_message, on_end)
        ws.send("go")
        assert ended.wait(5)
        time.sleep(0.2)  # the other messages arrive, and are dropped
    assert seen == [b"message 0"]
    (end,) = ends
    assert isinstance(end, ValueError)


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import gevent, threading
from websockets.sync.client import connect
from websockets.sync.server import serve
from shared.providers.messages import deliver_messages

def script(ws):
    ws.recv()
    for n in range(200):
        ws.send(f"{n}")
    ws.close()

received, readers, ended = [], set(), threading.Event()

def on_message(data, text):
    received.append(int(data))
    readers.add(gevent.getcurrent())

with serve(script, "127.0.0.1", 0, compression=None) as running:
    gevent.spawn(running.serve_forever)
    ws = connect(f"ws://127.0.0.1:{running.socket.getsockname()[1]}", compression=None)
    deliver_messages(ws, on_message, lambda reason: ended.set())
    ws.send("go")
    ended.wait(5)
    running.shutdown()
print(received == list(range(200)), len(readers), gevent.getcurrent() not in readers)
"""


def test_under_gevent_every_message_is_handled_in_the_connections_reader_greenlet() -> None:
    # One greenlet (websockets' reader) handles every message: no second greenlet and no
    # queue per message, which is the point.
    output = run_fresh(textwrap.dedent(GEVENT_SCRIPT)).strip().splitlines()[-1]
    assert output == "True 1 True"
