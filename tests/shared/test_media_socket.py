"""MediaSocket (the voice process's Telnyx websocket after the upgrade) over a real socket
pair, against websockets' client protocol on the other end: fragments, pings, closing,
oversized messages, and what it sends."""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Iterator

import pytest
from simple_websocket import ConnectionClosed
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.conftest import run_fresh
from tests.shared.socket_doubles import Upgraded
from web.voice.media_socket import MediaSocket


class Peer:
    """The Telnyx end: websockets' client protocol on a plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)

    def send_frames(self, *frames: tuple[Opcode, bytes, bool]) -> None:
        for opcode, data, fin in frames:
            if opcode is Opcode.TEXT:
                self.protocol.send_text(data, fin=fin)
            elif opcode is Opcode.CONT:
                self.protocol.send_continuation(data, fin=fin)
            elif opcode is Opcode.PING:
                self.protocol.send_ping(data)
            elif opcode is Opcode.CLOSE:
                self.protocol.send_close(1000)
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def read_frames(self, until: Opcode, timeout: float = 5.0) -> list[Frame]:
        """Frames the server sent, up to and including the first `until` frame."""
        self.sock.settimeout(timeout)
        frames: list[Frame] = []
        while not any(f.opcode is until for f in frames):
            data = self.sock.recv(65536)
            if not data:
                self.protocol.receive_eof()
            else:
                self.protocol.receive_data(data)
            frames += [e for e in self.protocol.events_received() if isinstance(e, Frame)]
            if not data:
                break
        return frames


@pytest.fixture
def pair() -> Iterator[tuple[MediaSocket, Upgraded, Peer]]:
    server_sock, client_sock = socket.socketpair()
    upgraded = Upgraded(server_sock)
    media = MediaSocket(upgraded, max_message_bytes=1024, ping_s=0.2)
    yield media, upgraded, Peer(client_sock)
    server_sock.close()
    client_sock.close()


def test_messages_in_fragments_arrive_whole_and_in_order(
    pair: tuple[MediaSocket, Upgraded, Peer],
) -> None:
    media, _, peer = pair
    peer.send_frames(
        (Opcode.TEXT, b'{"event":"start"}', True),
        (Opcode.TEXT, b'{"event":', False),
        (Opcode.CONT, b'"media"}', True),
    )
    assert media.receive() == b'{"event":"start"}'
    assert media.receive() == b'{"event":"media"}'


def test_a_ping_is_answered_and_sent_text_reaches_the_peer(
    pair: tuple[MediaSocket, Upgraded, Peer],
) -> None:
    media, _, peer = pair
    peer.send_frames((Opcode.PING, b"are you there", True), (Opcode.TEXT, b"{}", True))
    assert media.receive() == b"{}"
    media.send('{"event":"clear"}')
    frames = peer.read_frames(until=Opcode.TEXT)
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.PONG, b"are you there"),
        (Opcode.TEXT, b'{"event":"clear"}'),
    ]


def test_the_peers_close_ends_receive_and_further_sends(
    pair: tuple[MediaSocket, Upgraded, Peer],
) -> None:
    media, upgraded, peer = pair
    peer.send_frames((Opcode.CLOSE, b"", True))
    with pytest.raises(ConnectionClosed):
        media.receive()
    assert peer.read_frames(until=Opcode.CLOSE)[-1].opcode is Opcode.CLOSE  # answered
    with pytest.raises(ConnectionClosed):
        media.send("{}")
    media.close()
    assert not upgraded.connected  # flask-sock's own close() will send nothing more


def test_an_oversized_message_closes_the_stream_with_1009(
    pair: tuple[MediaSocket, Upgraded, Peer],
) -> None:
    media, _, peer = pair
    peer.send_frames((Opcode.TEXT, b"x" * 5000, True))
    with pytest.raises(ConnectionClosed):
        media.receive()
    close = peer.read_frames(until=Opcode.CLOSE)[-1]
    assert close.opcode is Opcode.CLOSE and close.data[:2] == (1009).to_bytes(2, "big")


def test_a_receive_timeout_returns_none_then_a_silent_peer_is_pinged_and_dropped(
    pair: tuple[MediaSocket, Upgraded, Peer],
) -> None:
    media, _, peer = pair
    assert media.receive(timeout=0.05) is None
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            media.receive()
        except ConnectionClosed as exc:
            outcome.append(exc)

    reader = threading.Thread(target=wait)
    reader.start()
    reader.join(5)
    frames = peer.read_frames(until=Opcode.CLOSE)  # to EOF: no close frame comes
    assert [f.opcode for f in frames] == [Opcode.PING]
    assert peer.protocol.state is State.CLOSED  # the connection was dropped
    assert outcome, "receive() ended with ConnectionClosed"


def test_a_peer_that_stops_reading_cannot_hang_a_send(
    pair: tuple[MediaSocket, Upgraded, Peer],
) -> None:
    media, _, _ = pair
    failure: list[BaseException] = []

    def flood() -> None:
        try:
            while True:  # the peer reads nothing: the socket buffer fills, then send blocks
                media.send("x" * 60_000)
        except (ConnectionClosed, OSError) as exc:
            failure.append(exc)

    sender = threading.Thread(target=flood)
    sender.start()
    sender.join(5)  # two quiet ping periods (0.4 s) and the watchdog drops the connection
    assert not sender.is_alive() and failure


class ScriptedSocket:
    """A socket whose reads return the given chunks, then EOF; writes are kept."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.written = bytearray()

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def send(self, data: bytes) -> int:
        self.written += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.written += data

    def settimeout(self, timeout: float | None) -> None:
        """Reads never block here."""

    def shutdown(self, how: int) -> None:
        """Nothing to shut down."""


def receive_all(chunks: list[bytes]) -> tuple[list[bytes], list[Frame]]:
    """Every message MediaSocket reads from `chunks`, and the frames it sent back."""
    sock = ScriptedSocket(chunks)
    media = MediaSocket(Upgraded(sock), max_message_bytes=1024, ping_s=60)  # type: ignore[arg-type]
    messages: list[bytes] = []
    with pytest.raises(ConnectionClosed):
        while True:
            message = media.receive()
            assert message is not None
            messages.append(message)
    media.close()
    reader = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    reader.receive_data(bytes(sock.written))
    return messages, [e for e in reader.events_received() if isinstance(e, Frame)]


def client_stream(*frames: tuple[Opcode, bytes, bool]) -> bytes:
    """What a Telnyx client sends for these frames (masked, as clients must)."""
    protocol = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    for opcode, data, fin in frames:
        if opcode is Opcode.TEXT:
            protocol.send_text(data, fin=fin)
        elif opcode is Opcode.BINARY:
            protocol.send_binary(data, fin=fin)
        elif opcode is Opcode.CONT:
            protocol.send_continuation(data, fin=fin)
        elif opcode is Opcode.PING:
            protocol.send_ping(data)
        elif opcode is Opcode.CLOSE:
            protocol.send_close(1000)
    return b"".join(protocol.data_to_send())


MIXED = (
    (Opcode.TEXT, b'{"event":"media","n":1}', True),
    (Opcode.PING, b"p1", True),
    (Opcode.TEXT, b"x" * 300, True),  # 16-bit length form
    (Opcode.TEXT, b'{"event":', False),
    (Opcode.PING, b"p2", True),  # a control frame between fragments
    (Opcode.CONT, b'"mark"}', True),
    (Opcode.BINARY, b"\x00\xff" * 10, True),
    (Opcode.TEXT, b"", True),
    (Opcode.CLOSE, b"", True),
)
MIXED_MESSAGES = [
    b'{"event":"media","n":1}',
    b"x" * 300,
    b'{"event":"mark"}',
    b"\x00\xff" * 10,
    b"",
]


@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_frames_split_anywhere_across_reads_arrive_whole(split: str) -> None:
    stream = client_stream(*MIXED)
    if split == "whole":
        chunks = [stream]
    elif split == "bytes":
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    else:
        rng, chunks, pos = random.Random(7), [], 0
        while pos < len(stream):
            size = rng.randint(1, 40)
            chunks.append(stream[pos : pos + size])
            pos += size
    messages, replies = receive_all(chunks)
    assert messages == MIXED_MESSAGES
    assert [(f.opcode, f.data) for f in replies] == [
        (Opcode.PONG, b"p1"),
        (Opcode.PONG, b"p2"),
        (Opcode.CLOSE, (1000).to_bytes(2, "big")),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        bytes([0x81, 5]) + b"hello",  # a client frame without a mask
        bytes([0xC1, 0x85, 0, 0, 0, 0]) + b"hello",  # RSV1 set, no extension agreed
        client_stream((Opcode.TEXT, b"a", False)) + client_stream((Opcode.TEXT, b"b", True)),
    ],
    ids=["unmasked", "rsv1", "new-message-inside-fragments"],
)
def test_protocol_violations_fail_the_stream_with_1002(bad: bytes) -> None:
    stream = (
        client_stream((Opcode.TEXT, b"first", True))
        + bad
        + client_stream((Opcode.TEXT, b"never read", True))
    )
    messages, replies = receive_all([stream])
    assert messages == [b"first"]
    assert replies[-1].opcode is Opcode.CLOSE
    assert replies[-1].data[:2] == (1002).to_bytes(2, "big")


# A fresh interpreter patched by gevent, as the voice worker is. Frames come 5 ms apart;
# the server socket's raw recv() is counted. Waiting for readability first, each frame
# costs one recv; a try-first read would also fail once per frame (EAGAIN). The stream
# ends when the peer closes: EOF reaches receive() as ConnectionClosed.
GEVENT_READS = """
from gevent import monkey
monkey.patch_all()
import socket, gevent
from simple_websocket import ConnectionClosed
from tests.shared.socket_doubles import Upgraded, count_recvs, phone
from web.voice.media_socket import MediaSocket

server, client = socket.socketpair()
counting = count_recvs(server)
media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=5)
gevent.spawn(phone, client, [b'{"n": %d}' % n for n in range(20)], 0.005, [])
got = []
try:
    while True:
        got.append(media.receive())
except ConnectionClosed:
    pass
media.close()
print(len(got), counting.calls)
"""


def test_under_gevent_each_frame_costs_one_read() -> None:
    messages, reads = map(int, run_fresh(GEVENT_READS).split())
    assert messages == 20
    assert reads <= messages + 2  # the frames, the EOF, at most one spurious wake-up


SEND_NOW_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket

import gevent
import greenlet
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import State
from websockets.uri import parse_uri

import web.voice.media_socket as media_socket
from tests.shared.socket_doubles import Upgraded
from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import read_ticker

listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
server = listener.accept()[0]
server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # TCP: partial writes too
media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=60, ticker=read_ticker())
handed_off = []
start_worker = media_socket.start_worker
media_socket.start_worker = lambda run, name: handed_off.append(name) or start_worker(run, name)

switched = []  # a greenlet switch while send_now runs: it waited
inside = [False]
greenlet.settrace(lambda event, args: inside[0] and switched.append(event))

media._write_lock.acquire()  # another greenlet is writing
refused_while_locked = not media.send_now("never")
media._write_lock.release()

expected, refused = [], 0


def pacer():  # as the playout does: a refused message is tried again later
    global refused
    for n in range(60):
        text = f"{n}:" + "x" * 3000
        while True:
            inside[0] = True
            went = media.send_now(text, f"mark {n}")
            inside[0] = False
            if went:
                expected.extend([text, f"mark {n}"])
                break
            refused += 1
            gevent.sleep(0.002)
        if n % 20 == 0:
            media.send(f"clear {n}")  # a blocking send between them, from this greenlet
            expected.append(f"clear {n}")


got = []


def peer():  # Telnyx, reading slowly
    protocol = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    while len(got) < len(expected) or not done.dead:
        gevent.sleep(0.003)
        protocol.receive_data(client.recv(2048))
        got.extend(e.data.decode() for e in protocol.events_received() if isinstance(e, Frame))


done = gevent.spawn(pacer)
reader = gevent.spawn(peer)
done.join(20)
reader.join(20)
media.close()
print(json.dumps({
    "refused_while_locked": refused_while_locked,
    "in_order": got == expected,
    "messages": len(got),
    "refused": refused,
    "handed_off": len(handed_off),
    "switched": len(switched),
}))
"""


def test_send_now_never_waits_and_what_it_takes_arrives_whole_and_in_order() -> None:
    # The read ticker's pump sends agent audio with it: a message the socket cannot take
    # now is refused (tried again later), never waited for, and never half-sent and lost.
    result = json.loads(run_fresh(SEND_NOW_SCRIPT))
    assert result["refused_while_locked"]
    assert result["in_order"] and result["messages"] == 60 * 2 + 3
    assert result["refused"] > 0, "the small buffers filled: some sends were refused"
    assert result["handed_off"] > 0, "some were taken in part, their rest written by a worker"
    assert result["switched"] == 0
