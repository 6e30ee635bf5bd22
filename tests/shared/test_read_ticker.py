"""The media-read ticker: many MediaSockets woken by one timer, in a gevent interpreter of
their own (this test process is not monkey-patched, as the voice process is)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import json
import socket

import gevent
from gevent.event import Event
from simple_websocket import ConnectionClosed
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import read_ticker

FRAMES = 20


class Counting:
    def __init__(self, raw):
        self.raw, self.calls = raw, 0

    def recv(self, *args):
        self.calls += 1
        return self.raw.recv(*args)

    def __getattr__(self, name):
        return getattr(self.raw, name)


class Upgraded:
    def __init__(self, sock):
        self.sock, self.connected = sock, True


def phone(client, name, sent):
    peer = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    for n in range(FRAMES):
        gevent.sleep(0.003)
        peer.send_text(b"%s %d" % (name.encode(), n))
        client.sendall(b"".join(peer.data_to_send()))
        sent.append(n)
    gevent.sleep(0.003)
    client.close()


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
    counting = Counting(server._sock)
    server._sock = counting
    media = MediaSocket(Upgraded(server), max_message_bytes=1024, ping_s=5, ticker=ticker)
    calls[name] = {"got": [], "sent": [], "counting": counting}
    gevent.spawn(phone, client, name, calls[name]["sent"])
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
gevent.spawn(phone, client, "d", [])
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
    done = subprocess.run(  # noqa: S603  # this interpreter, our own script
        [sys.executable, "-c", SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


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
