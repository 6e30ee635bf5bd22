"""shared/providers/messages.py: the providers' websocket messages below the SDKs, against
a real websockets server (the Deepgram and Cartesia SDKs' transport)."""

from __future__ import annotations

import gc
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve

from shared.providers.messages import _FrameSplitter, deliver_messages, send_binary
from tests.conftest import run_fresh
from tests.ws_handshake import opened


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


def _open_client() -> tuple[ClientProtocol, ServerProtocol]:
    return opened("ws://provider/", max_size=2**20)


def _provider_stream(server: ServerProtocol) -> bytes:
    """Messages of every length class, a ping, a fragmented message, a frame over the
    client's limit in the middle of nothing, then a close."""
    for size in (0, 5, 125, 126, 70_000):
        server.send_text(b"t" * size)
        server.send_binary(bytes(i % 256 for i in range(size)))
    server.send_ping(b"still there?")
    server.send_text(b"one ", fin=False)
    server.send_continuation(b"two", fin=True)
    server.send_binary(b"after the fragments")
    server.send_close(1000, "done")
    return b"".join(server.data_to_send())


def _what_it_makes(client: ClientProtocol, stream: bytes, split: int) -> list[object]:
    seen: list[object] = []
    for at in range(0, len(stream), split):
        client.receive_data(stream[at : at + split])
        seen += [(e.opcode, bytes(e.data), e.fin) for e in client.events_received()]
        seen += [f.opcode for f in _frames_sent(client)]
    client.receive_eof()
    seen += [(e.opcode, bytes(e.data), e.fin) for e in client.events_received()]
    return [*seen, client.state, client.close_rcvd and client.close_rcvd.code]


def _frames_sent(client: ClientProtocol) -> list[Frame]:
    """What the client wrote (pongs, its close), as a server reads it."""
    reader = ServerProtocol(max_size=None, state=State.OPEN)
    reader.receive_data(b"".join(d for d in client.data_to_send() if d))
    return [e for e in reader.events_received() if isinstance(e, Frame)]


@pytest.mark.parametrize("split", [1, 3, 7, 1000, 1 << 20])
def test_frames_split_by_hand_make_exactly_what_websockets_protocol_makes(split: int) -> None:
    plain, plain_server = _open_client()
    fast, fast_server = _open_client()
    _FrameSplitter.install(fast)
    assert fast.receive_data.__self__ is not fast  # type: ignore[attr-defined]  # installed
    expected = _what_it_makes(plain, _provider_stream(plain_server), split)
    assert _what_it_makes(fast, _provider_stream(fast_server), split) == expected
    assert Opcode.PONG in expected and Opcode.CLOSE in expected  # answered by websockets


def test_a_frame_over_the_limit_fails_the_connection_as_websockets_would() -> None:
    fast, server = _open_client()
    _FrameSplitter.install(fast)
    server.send_binary(b"x" * (2**20 + 1))
    fast.receive_data(b"".join(server.data_to_send())[:1000])
    assert fast.state is State.CLOSING and fast.events_received() == []


def test_the_splitter_waits_for_a_frame_boundary_and_keeps_no_cycle() -> None:
    client, server = _open_client()
    server.send_text(b"a message")
    client.receive_data(b"".join(server.data_to_send())[:2])  # its header only: mid-frame
    _FrameSplitter.install(client)
    assert client.receive_data.__func__ is ClientProtocol.receive_data  # type: ignore[attr-defined]

    gc.disable()
    try:
        client, server = _open_client()
        _FrameSplitter.install(client)
        splitter = weakref.ref(client.receive_data.__self__)  # type: ignore[attr-defined]
        _what_it_makes(client, _provider_stream(server), 1000)  # to the close and EOF
        # Gone with the stream's end, by reference counting: websockets' protocol keeps
        # cycles of its own (its parser generator), and nothing of the splitter joins them.
        assert splitter() is None and not {"receive_data", "events_received"} & set(vars(client))
    finally:
        gc.enable()


def test_a_binary_frame_is_framed_by_hand_only_where_websockets_would_send_the_same() -> None:
    from websockets.extensions.permessage_deflate import PerMessageDeflate

    from shared.providers.messages import _binary_frame

    client, server = _open_client()
    server.receive_data(_binary_frame(client, b"audio"))  # by hand: the server reads it
    [frame] = server.events_received()
    assert (frame.opcode, frame.data) == (Opcode.BINARY, b"audio")
    # With an extension negotiated the frame is websockets' own (compressed here), and the
    # server that negotiated it reads it back.
    deflated, deflating_server = _open_client()
    deflated.extensions = [PerMessageDeflate(False, False, 15, 15)]
    deflating_server.extensions = [PerMessageDeflate(False, False, 15, 15)]
    framed = _binary_frame(deflated, b"audio " * 50)
    assert framed[0] & 0x40  # RSV1: compressed
    deflating_server.receive_data(framed)
    [frame] = deflating_server.events_received()
    assert frame.data == b"audio " * 50
