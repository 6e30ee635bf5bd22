"""Micro-benchmark: CPU per audio message the voice process spends sending to Deepgram,
through websockets' `send()` (what the SDK's `send_media` calls) or through
`shared.providers.messages.send_binary`.

    .venv/bin/python -m scripts.bench.provider_send [--connections 100] [--seconds 8]
                                                    [--rounds 3]

As in the voice process: this process opens `connections` websockets
(`websockets.sync.client.connect`, as the Deepgram SDK does), each with a sender greenlet
fed through a deque and an Event (`DeepgramStream`'s hand-off), and one greenlet on a 2 ms
timer (the read ticker's pump) hands each connection a 320-byte message (40 ms of μ-law)
every 40 ms. A server process (plain threads, its CPU not counted) reads them. Printed per
run: this process's CPU per message sent; runs alternate.
"""

from __future__ import annotations

import sys

from gevent import monkey

if "--serve" not in sys.argv:  # the server runs on plain threads
    monkey.patch_all()

import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from scripts.bench.readers import compare, cpu_us_per_message, server_port

MESSAGE = os.urandom(320)
INTERVAL_S = 0.04
TICK_S = 0.002
MODES = ("websocket.send", "send_binary")


def _serve(seconds: float) -> None:
    from websockets.sync.server import ServerConnection, serve

    def handler(ws: ServerConnection) -> None:
        for _ in ws:
            pass

    with serve(handler, "127.0.0.1", 0, compression=None) as server:
        print(server.socket.getsockname()[1], flush=True)
        server.serve_forever()


class _Sender:
    """One connection's sender greenlet, fed as DeepgramStream feeds its own."""

    def __init__(self, send: Callable[[bytes], None], sent: list[int]) -> None:
        self._send, self._sent = send, sent
        self._outbox: deque[bytes] = deque()
        self._ready = Event()
        self.greenlet = gevent.spawn(self._run)

    def put(self, message: bytes) -> None:
        self._outbox.append(message)
        self._ready.set()

    def _run(self) -> None:
        while True:
            self._ready.wait()
            self._ready.clear()
            while self._outbox:
                self._send(self._outbox.popleft())
                self._sent[0] += 1


def _run(connections: int, seconds: float, mode: str) -> float:
    """µs of this process's CPU per message sent, over the middle of the run."""
    from websockets.sync.client import connect

    from shared.providers.messages import send_binary

    server, port = server_port("scripts.bench.provider_send", seconds + 4)
    sockets = [
        connect(f"ws://127.0.0.1:{port}", compression=None, legacy=True) for _ in range(connections)
    ]
    sent = [0]
    senders = [
        _Sender(ws.send if mode == MODES[0] else _bound(send_binary, ws), sent) for ws in sockets
    ]

    def pump() -> None:  # every tick, the connections whose 40 ms are up
        per_tick, turn, due = max(1, round(connections * TICK_S / INTERVAL_S)), 0, time.monotonic()
        while True:
            due += TICK_S
            gevent.sleep(max(0.0, due - time.monotonic()))
            for _ in range(per_tick):
                senders[turn % connections].put(MESSAGE)
                turn += 1

    driver = gevent.spawn(pump)
    us = cpu_us_per_message(sent, 2, seconds)
    driver.kill()
    gevent.killall([sender.greenlet for sender in senders])
    for ws in sockets:
        ws.close()
    server.kill()
    server.wait(10)
    return us


def _bound(send: Callable[[Any, bytes], None], ws: Any) -> Callable[[bytes], None]:
    return lambda message: send(ws, message)


if __name__ == "__main__":
    compare(
        MODES,
        _run,
        f"a 320-byte message each every {INTERVAL_S * 1000:.0f} ms, µs of CPU per message sent",
        _serve,
    )
