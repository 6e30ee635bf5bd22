"""The media-read ticker: many MediaSockets woken by one timer, in a gevent interpreter of
their own (this test process is not monkey-patched, as the voice process is)."""

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
