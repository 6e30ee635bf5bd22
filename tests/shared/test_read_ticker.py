"""The media-read ticker: many MediaSockets woken by one timer, in a gevent interpreter of
their own (this test process is not monkey-patched, as the voice process is)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.conftest import run_fresh

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket

import gevent
from gevent.event import Event
from simple_websocket import ConnectionClosed

from tests.shared.socket_doubles import Upgraded, count_recvs, phone
from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import read_ticker

FRAMES = 20


def frames(name):
    return [b"%s %d" % (name.encode(), n) for n in range(FRAMES)]


def reader(media, got, hold=None):
    try:
        while True:
            got.append(media.receive().decode())
            if hold is not None and len(got) == 1:
                hold.wait()  # this call's reader is busy (or blocked) for a while
    except ConnectionClosed:
        pass
    finally:
        media.close()


ticker = read_ticker()
calls = {}
hold = Event()
for name in ("a", "b", "c"):
    server, client = socket.socketpair()
    counting = count_recvs(server)
    media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=5, ticker=ticker)
    calls[name] = {"got": [], "sent": [], "counting": counting}
    gevent.spawn(phone, client, frames(name), 0.003, calls[name]["sent"])
    calls[name]["reader"] = gevent.spawn(
        reader, media, calls[name]["got"], hold if name == "a" else None
    )

# While a's reader is held, b and c are read to the end.
gevent.joinall([calls["b"]["reader"], calls["c"]["reader"]], timeout=10)
held_at = len(calls["a"]["got"])
watched_while_held = ticker.watched
hold.set()
while len(calls["a"]["got"]) < FRAMES or ticker.watched:
    gevent.sleep(0.01)

# forget() while a reader waits: it goes on reading on its own.
server, client = socket.socketpair()
media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=5, ticker=ticker)
late = []
waiting = gevent.spawn(reader, media, late)
gevent.sleep(0.02)
registered = ticker.watched
ticker.forget(server.fileno())
gevent.spawn(phone, client, frames("d"), 0.003, [])
waiting.join(5)

print(json.dumps({
    "got": {k: v["got"] for k, v in calls.items()},
    "reads": {k: v["counting"].calls for k, v in calls.items()},
    "held_at": held_at,
    "watched_while_held": watched_while_held,
    "timer_active_after": ticker._timer.active,
    "registered_before_forget": registered,
    "late": late,
}))
"""


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return json.loads(run_fresh(SCRIPT))  # type: ignore[no-any-return]


def test_one_ticker_reads_every_socket_and_a_busy_reader_holds_up_only_its_own_call(
    result: dict[str, Any],
) -> None:
    for name in ("a", "b", "c"):
        assert result["got"][name] == [f"{name} {n}" for n in range(20)]
    # b and c were read to their end (and closed) while a's reader was still busy with
    # its first message a's socket alone still watched.
    assert result["held_at"] == 1
    assert result["watched_while_held"] == 1
    for name in ("b", "c"):  # one read per frame (or fewer), the EOF, one spurious wake
        assert result["reads"][name] <= 22
    # Closed sockets are forgotten; with none left the timer stops.
    assert result["timer_active_after"] is False


def test_a_reader_waiting_when_its_socket_is_forgotten_reads_on_its_own(
    result: dict[str, Any],
) -> None:
    assert result["registered_before_forget"] == 1
    assert result["late"] == [f"d {n}" for n in range(20)]


PUMP_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket

import gevent
from simple_websocket import ConnectionClosed
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.shared.socket_doubles import Upgraded
from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import read_ticker

ticker = read_ticker()
pumped = []  # (greenlet, message) handled outside the readers


def reader(media, seen, out):
    # As web/voice/media.py reads: pumped while it can; when handed back, one receive()
    # whose message goes to the same handler.
    def handle(raw):
        seen.append(raw.decode())
        if gevent.getcurrent() is not me:
            pumped.append((gevent.getcurrent(), raw.decode()))
        if raw == b"end":
            return "ended"
        if raw == b"boom":
            raise ValueError("boom")
        return None

    me = gevent.getcurrent()
    try:
        while True:
            try:
                result = media.pump(handle)
                if result is None:
                    result = handle(media.receive())
            except ValueError as exc:
                out.append(f"raised {exc}")
                continue
            if result is not None:
                out.append(result)
    except ConnectionClosed:
        out.append("closed")
    finally:
        media.close()


def peer(client, writes, gap_s=0.003):
    # Each write: frames [(opcode, bytes)] sent together, or ("split", text): one frame
    # in two writes. The socket closes at the end; returns the opcodes the server sent.
    protocol = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    for write in writes:
        gevent.sleep(gap_s)
        if write[0] == "split":
            protocol.send_text(write[1])
            data = b"".join(protocol.data_to_send())
            client.sendall(data[:7])
            gevent.sleep(0.01)
            client.sendall(data[7:])
            continue
        for opcode, data in write:
            if opcode is Opcode.PING:
                protocol.send_ping(data)
            else:
                protocol.send_text(data)
        client.sendall(b"".join(protocol.data_to_send()))
    gevent.sleep(0.05)
    client.settimeout(0.2)
    try:
        protocol.receive_data(client.recv(65536))
    except OSError:
        pass
    client.close()
    return [e.opcode.name for e in protocol.events_received() if isinstance(e, Frame)]


T = Opcode.TEXT
scripts = {
    "plain": [[(T, b"p %d" % n)] for n in range(20)],
    "ping": [[(T, b"q %d" % n)] for n in range(5)]
    + [[(Opcode.PING, b"hi")]]
    + [[(T, b"q %d" % n)] for n in range(5, 10)],
    "end": [[(T, b"c 0"), (T, b"end"), (T, b"c 1"), (T, b"c 2")], [(T, b"c 3")]],
    "split": [[(T, b"s 0")], ("split", b"s 1 " + b"x" * 40), [(T, b"s 2")]],
    "boom": [[(T, b"b 0")], [(T, b"boom")], [(T, b"b 1")]],
}
readers, peers, seen, outs = {}, {}, {}, {}
for name, writes in scripts.items():
    server, client = socket.socketpair()
    media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=5, ticker=ticker)
    seen[name], outs[name] = [], []
    readers[name] = gevent.spawn(reader, media, seen[name], outs[name])
    peers[name] = gevent.spawn(peer, client, writes)
gevent.joinall(list(readers.values()) + list(peers.values()), timeout=10)

print(json.dumps({
    "seen": seen,
    "outs": outs,
    "pump_greenlets": len({g for g, _ in pumped}),
    "pumped": [m for _, m in pumped],
    "peer_got": {name: g.value for name, g in peers.items()},
    "watched_after": ticker.watched,
}))
"""


@pytest.fixture(scope="module")
def pumped() -> dict[str, Any]:
    return json.loads(run_fresh(PUMP_SCRIPT))  # type: ignore[no-any-return]


def test_the_pump_reads_every_socket_in_one_greenlet_in_order(pumped: dict[str, Any]) -> None:
    assert pumped["seen"]["plain"] == [f"p {n}" for n in range(20)]
    assert pumped["outs"]["plain"] == ["closed"]
    assert [m for m in pumped["pumped"] if m.startswith("p ")] == [f"p {n}" for n in range(20)]
    assert pumped["pump_greenlets"] == 1  # for every socket: not their readers
    assert pumped["watched_after"] == 0


def test_a_control_frame_goes_to_the_reader_and_the_pump_takes_over_again(
    pumped: dict[str, Any],
) -> None:
    assert pumped["seen"]["ping"] == [f"q {n}" for n in range(10)]
    assert pumped["peer_got"]["ping"] == ["PONG"]  # answered by the reader's protocol
    # The reader reads on to the next message (q 5), then hands back to the pump.
    assert [m for m in pumped["pumped"] if m.startswith("q ")] == [
        f"q {n}" for n in (0, 1, 2, 3, 4, 6, 7, 8, 9)
    ]


def test_a_handlers_result_stops_the_pump_and_the_rest_stays_in_order(
    pumped: dict[str, Any],
) -> None:
    # "end" stops the pump with c 1 and c 2 read in the same recv: they come next, then
    # c 3 through the pump again.
    assert pumped["seen"]["end"] == ["c 0", "end", "c 1", "c 2", "c 3"]
    assert pumped["outs"]["end"] == ["ended", "closed"]
    assert "c 3" in pumped["pumped"]


def test_a_frame_split_across_reads_arrives_whole_and_a_handlers_error_reaches_the_reader(
    pumped: dict[str, Any],
) -> None:
    assert pumped["seen"]["split"] == ["s 0", "s 1 " + "x" * 40, "s 2"]
    assert pumped["seen"]["boom"] == ["b 0", "boom", "b 1"]
    assert pumped["outs"]["boom"] == ["raised boom", "closed"]


CATCH_UP_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket
import sys
import time

import gevent
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from shared import realtime
from tests.shared.socket_doubles import Upgraded
from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import read_ticker

ticker = read_ticker()
if sys.argv[1] == "registered":
    realtime.register(ticker.catch_up)
server, client = socket.socketpair()
media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=5, ticker=ticker)
handled = {}


def handle(raw):
    handled[raw.decode()] = time.monotonic()  # and None: the pump goes on


gevent.spawn(media.pump, handle)
protocol = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)


def write(text):
    protocol.send_text(text.encode())
    client.sendall(b"".join(protocol.data_to_send()))
    return time.monotonic()


written = {"warm": write("warm")}
gevent.sleep(0.05)  # the pump reads "warm": the socket is the pump's now


def bulk_work():
    # 150 ms without yielding (a burst of replies, say), with a checkpoint every 0.5 ms;
    # a frame arrives 20 ms in.
    started = time.monotonic()
    while (now := time.monotonic()) - started < 0.15:
        if "late" not in written and now - started > 0.02:
            written["late"] = write("late")
        deadline = now + 0.0005
        while time.monotonic() < deadline:
            pass
        realtime.checkpoint()
    return time.monotonic()


busy_until = gevent.spawn(bulk_work).get()
gevent.sleep(0.05)
print(json.dumps({
    "warm": "warm" in handled,
    "waited": handled["late"] - written["late"],
    "during_bulk_work": handled["late"] < busy_until,
}))
"""


@pytest.mark.parametrize("registered", [True, False])
def test_a_checkpoint_in_bulk_work_reads_the_frames_that_wait(registered: bool) -> None:
    # The read ticker's catch_up at the process's checkpoints (shared/realtime.py): a frame
    # that arrives while a greenlet works without yielding is read at its next checkpoint,
    # not when the event loop gets its turn again. Without the registration, it waits.
    result = json.loads(run_fresh(CATCH_UP_SCRIPT, "registered" if registered else "not"))
    assert result["warm"]
    if registered:
        assert result["during_bulk_work"]
        assert result["waited"] < 0.015  # catch_up's 4 ms, a checkpoint every 0.5 ms
    else:
        assert not result["during_bulk_work"]
        assert result["waited"] > 0.1


DELAYED_ACKS_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket
import struct

import gevent

from tests.shared.socket_doubles import Upgraded, phone
from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import read_ticker

FRAMES = 30
ticker = read_ticker()


def acks_sent(delayed_acks):
    # Telnyx's end on real TCP (loopback, no Nagle), a frame every 20 ms; what the pumped
    # server end sent back once every frame is in: only ACKs (and the SYN-ACK).
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = listener.accept()[0]
    media = MediaSocket(
        Upgraded(server), max_message_bytes=1024, ping_s=5, ticker=ticker, delayed_acks=delayed_acks
    )
    got = []

    def handle(raw):
        got.append(raw)
        return "all in" if len(got) == FRAMES else None

    sender = gevent.spawn(phone, client, [b'{"n": %d}' % n for n in range(FRAMES)], 0.02, [])
    assert media.pump(handle) == "all in"
    info = server.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    segments_out = struct.unpack_from("I", info, 136)[0]  # tcp_info.tcpi_segs_out
    sender.join()
    media.close()
    server.close()
    listener.close()
    return {"frames": len(got), "segments_out": segments_out}


print(json.dumps({"delayed": acks_sent(True), "every read": acks_sent(False)}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_QUICKACK and tcp_info are Linux's")
def test_with_delayed_acks_the_pump_acks_telnyxs_frames_far_less_often() -> None:
    sent = json.loads(run_fresh(DELAYED_ACKS_SCRIPT))
    assert sent["delayed"]["frames"] == sent["every read"]["frames"] == 30
    # Every read of a small pushed segment is ACKed by default; delayed, at most every
    # second one (RFC 1122), or on the kernel's delayed-ACK timer.
    assert sent["every read"]["segments_out"] >= 28
    assert sent["delayed"]["segments_out"] <= 18


STEPS_SCRIPT = r"""
import json
import time

import gevent

from shared import realtime
from web.voice.read_ticker import read_ticker

ticker = read_ticker()
realtime.register(ticker.catch_up)
ran = []
start = time.monotonic()


def step(name):
    def run():
        ran.append((name, time.monotonic() - start, gevent.getcurrent() is ticker._pump))
        if name == "again":  # asks for another step at once, from inside the steps
            ticker.at(time.monotonic(), step("asked from a step"))

    return run


# No socket is watched at all: the steps alone start the timer and the pump.
ticker.at(start + 0.05, step("later"))
ticker.at(start + 0.01, step("sooner"))
ticker.at(start + 0.01, step("again"))
gevent.sleep(0.1)
timer_stopped = not ticker._timer.active

# Work that never yields still has a step run at its checkpoints.
ticker.at(time.monotonic() + 0.01, step("in bulk work"))
busy_from = time.monotonic() - start
while time.monotonic() - start < busy_from + 0.05:
    realtime.checkpoint()
print(json.dumps({"ran": ran, "timer_stopped": timer_stopped, "busy_from": busy_from}))
"""


def test_steps_run_in_the_pumps_rounds_in_time_order_and_never_early() -> None:
    result = json.loads(run_fresh(STEPS_SCRIPT))
    ran = {name: (at, in_pump) for name, at, in_pump in result["ran"]}
    assert [name for name, _, _ in result["ran"]] == [
        "sooner",
        "again",
        "asked from a step",  # in the next round, not in the one that ran "again"
        "later",
        "in bulk work",
    ]
    # In the pump's greenlet, woken by the ticker; the last in the busy greenlet's checkpoint.
    assert [in_pump for _, in_pump in ran.values()] == [True, True, True, True, False]
    assert ran["sooner"][0] >= 0.01 and ran["later"][0] >= 0.05
    assert ran["asked from a step"][0] > ran["again"][0]
    assert result["timer_stopped"], "nothing left to step: the timer stops"
    # Run at a checkpoint of the busy greenlet, in time, though the hub never got a turn.
    assert result["busy_from"] + 0.01 <= ran["in bulk work"][0] < result["busy_from"] + 0.03
