"""The fake phone's own data framing, read back by websockets' server-side parser."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from scripts.fakes.telnyx_ws import WebSocketPipe
from tests.ws_handshake import answered, opened


def _open_pipe() -> tuple[WebSocketPipe, socket.socket, ServerProtocol]:
    """A pipe past its handshake (done in memory), the socket its frames go to, and the
    server protocol that reads them."""
    client, server = opened()
    ours, theirs = socket.socketpair()
    return WebSocketPipe(ours, client), theirs, server


def _read_all(theirs: socket.socket) -> Callable[[], bytes]:
    """Read `theirs` to EOF on a thread (a large frame does not fit the socket buffers)."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: theirs.recv(1 << 20), b"")))
    reader.start()

    def received() -> bytes:
        reader.join(10)
        return b"".join(chunks)

    return received


def _frames(server: ServerProtocol, data: bytes) -> list[Frame]:
    server.receive_data(data)
    return [e for e in server.events_received() if isinstance(e, Frame)]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_and_binary_frames_of_every_length_class_are_masked_and_read_back(size: int) -> None:
    pipe, theirs, server = _open_pipe()
    received = _read_all(theirs)
    text = "é" * (size // 2) + "x" * (size % 2)  # two UTF-8 bytes a character
    binary = bytes(i % 251 for i in range(size))
    pipe.send_text(text)
    pipe.send_binary(binary)
    pipe.sock.close()

    frames = _frames(server, received())  # the parser fails on an unmasked client frame
    assert [(f.opcode, f.fin) for f in frames] == [(Opcode.TEXT, True), (Opcode.BINARY, True)]
    assert frames[0].data.decode() == text
    assert frames[1].data == binary


def test_no_data_is_sent_once_the_websocket_is_closing() -> None:
    pipe, theirs, server = _open_pipe()
    received = _read_all(theirs)
    pipe.send_close(1000)
    with pytest.raises(InvalidState):
        pipe.send_text("too late")
    pipe.sock.close()
    assert [f.opcode for f in _frames(server, received())] == [Opcode.CLOSE]


def test_what_arrives_is_stamped_with_when_it_arrived_not_when_it_was_read() -> None:
    # The phone's playout starts when the agent's audio reached it: a load generator's
    # thread that reads 200 ms late must not move it (SO_TIMESTAMPNS, TCP on loopback).
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    client = ClientProtocol(parse_uri("ws://127.0.0.1/media"), state=State.OPEN)
    pipe = WebSocketPipe(ours, client)
    # Linux turns receive timestamps on for the machine in deferred work, after the first
    # socket asks for them (and off after the last closes): let it run.
    time.sleep(0.05)
    with ours, theirs:
        sent = time.monotonic()
        theirs.sendall(b"audio")
        time.sleep(0.2)
        data, arrived = pipe.recv_stamped()
        read = time.monotonic()
    assert data == b"audio"
    assert sent - 0.005 <= arrived < sent + 0.05  # (two clocks: a few µs either way)
    assert read - arrived >= 0.19


def _server_stream() -> tuple[bytes, list[tuple[bool, bytes]]]:
    """What a server sends (unmasked): data frames of each length class, a ping, a message
    in three fragments, then a close; and the messages a client must make of it."""
    server = ServerProtocol(max_size=None, state=State.OPEN)
    expected: list[tuple[bool, bytes]] = []
    for size in (0, 5, 125, 126, 70_000):
        server.send_text(b"t" * size)
        server.send_binary(bytes(i % 256 for i in range(size)))
        expected += [(False, b"t" * size), (True, bytes(i % 256 for i in range(size)))]
    server.send_ping(b"are you there")
    server.send_text(b"one ", fin=False)
    server.send_continuation(b"two ", fin=False)
    server.send_continuation(b"three", fin=True)
    server.send_binary(b"after the fragments")
    expected += [(False, b"one two three"), (True, b"after the fragments")]
    server.send_close(1000, "bye")
    late = b"after the close: never a message"
    return b"".join(server.data_to_send()) + bytes([0x81, len(late)]) + late, expected


@pytest.mark.parametrize("split", [1, 3, 7, 1000, 1 << 20])
def test_what_the_server_sends_is_read_whole_and_in_order_however_it_is_split(split: int) -> None:
    # Whole data frames are split off by hand; the ping, the fragments and the close go
    # through websockets' protocol, which must answer the ping and the close.
    stream, expected = _server_stream()
    pipe, theirs, server = _open_pipe()
    received = _read_all(theirs)
    messages = []
    for at in range(0, len(stream), split):
        messages += pipe.feed(stream[at : at + split])
    assert messages == expected
    assert pipe.closed is False and pipe.writable is False  # the close is being answered
    messages += pipe.feed(b"")
    assert messages == expected and pipe.closed
    answers = _frames(server, received())
    assert [(f.opcode, f.data) for f in answers] == [
        (Opcode.PONG, b"are you there"),
        (Opcode.CLOSE, answers[-1].data),
    ]


def test_frames_in_the_same_read_as_the_handshake_response_are_not_lost() -> None:
    client, server = answered()
    server.send_text(b"first")
    server.send_binary(b"second")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        pipe = WebSocketPipe(ours, client)
        data = b"".join(server.data_to_send())
        head_end = data.index(b"\r\n\r\n") + 4
        messages = pipe.feed(data[: head_end - 3]) + pipe.feed(data[head_end - 3 : head_end + 3])
        assert client.state is State.OPEN
        messages += pipe.feed(data[head_end + 3 :])
    assert messages == [(False, b"first"), (True, b"second")]


@pytest.mark.parametrize("fed", [100, None], ids=["its first 100 bytes", "whole"])
def test_a_frame_over_the_size_limit_fails_the_connection(fed: int | None) -> None:
    # From its header on: closing with 1009, not buffering what would follow.
    pipe, theirs, _ = _open_pipe()
    pipe.protocol.max_message_size = 1000
    server = ServerProtocol(max_size=None, state=State.OPEN)
    server.send_binary(b"x" * 5000)
    with theirs:
        assert pipe.feed(b"".join(server.data_to_send())[:fed]) == []
    assert not pipe.writable


def test_a_refused_handshake_is_read_to_its_end() -> None:
    client, server = answered(refuse=(403, "no such stream\n" * 50))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        pipe = WebSocketPipe(ours, client)
        data = b"".join(server.data_to_send())
        for at in range(0, len(data), 100):
            assert pipe.feed(data[at : at + 100]) == []
    # Known once its body is in (Content-Length), before the server closes.
    assert client.handshake_exc is not None and "403" in str(client.handshake_exc)
