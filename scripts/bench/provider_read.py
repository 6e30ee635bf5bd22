"""Micro-benchmark: CPU per message a provider socket costs the voice process to receive,
with websockets' sync client (the Deepgram and Cartesia SDKs' transport) waiting in gevent's
selector or in the read ticker's (`web/voice/read_ticker.py`, `wait_provider_sockets`), and
each message handed from websockets' reader to a `recv()` in another greenlet or handled in
the reader itself (`shared/providers/messages.py`, `deliver_messages`), with whole data
frames split off below websockets' parser or not (`split_frames`), or read and handled in
the ticker's pump (`_PumpedReads`, the voice process's way).

    .venv/bin/python -m scripts.bench.provider_read [--connections 100] [--seconds 8]
                                                    [--rounds 3]

This process opens `connections` websockets (`websockets.sync.client.connect`, as the SDKs
do) and reads each in a greenlet of its own (`recv()`, as our Deepgram and Cartesia readers
did), or counts its messages in websockets' reader (as they do now). A server process (plain threads, its CPU not counted) sends every connection a
1,400-byte binary message (a 100 ms Cartesia chunk of base64 μ-law is ~1.1 kB) every 50 ms.
Printed per run: this process's CPU per message received; runs alternate.
"""

from __future__ import annotations

import sys

from gevent import monkey

if "--serve" not in sys.argv:  # the server runs on plain threads
    monkey.patch_all()

import os
import selectors
import time

import gevent
from gevent.event import Event

from scripts.bench.readers import compare

MESSAGE = os.urandom(1400)
INTERVAL_S = 0.05
MODES = (
    "gevent's selector",
    "read ticker",
    "read ticker, handled in the reader",
    "read ticker, handled in the reader, frames split by hand",
    "read ticker, read and handled in its pump",
)


def _serve(seconds: float) -> None:
    from websockets.sync.server import ServerConnection, serve

    def handler(ws: ServerConnection) -> None:
        deadline = due = time.monotonic()
        deadline += seconds
        while due < deadline:
            due += INTERVAL_S
            time.sleep(max(0.0, due - time.monotonic()))
            ws.send(MESSAGE)

    with serve(handler, "127.0.0.1", 0, compression=None) as server:
        print(server.socket.getsockname()[1], flush=True)
        server.serve_forever()


def _run(connections: int, seconds: float, mode: str) -> float:
    """µs of this process's CPU per message received, over the middle of the run."""
    from websockets.sync import connection as websockets_connection
    from websockets.sync.client import connect

    from scripts.bench.readers import cpu_us_per_message, read_until_closed, server_port
    from shared.providers.messages import deliver_messages, pump_reads_with
    from web.voice.read_ticker import read_ticker, wait_provider_sockets

    websockets_connection.selectors = selectors  # type: ignore[attr-defined]  # gevent's
    if mode != MODES[0]:
        ticker = read_ticker()
        assert ticker is not None, "no epoll here"
        wait_provider_sockets(ticker)
        if mode != MODES[4]:
            pump_reads_with(None)
    server, port = server_port("scripts.bench.provider_read", seconds + 4)
    received = [0]

    def read() -> None:
        ws = connect(f"ws://127.0.0.1:{port}", compression=None, legacy=True)
        if mode not in MODES[2:]:
            read_until_closed(ws.recv, ws.close, received)
            return
        ended = Event()
        split = mode in MODES[3:]
        deliver_messages(ws, lambda data, text: count(), lambda _: ended.set(), split_frames=split)
        ended.wait()
        ws.close()

    def count() -> None:
        received[0] += 1

    readers = [gevent.spawn(read) for _ in range(connections)]
    us = cpu_us_per_message(received, 2, seconds)  # after every connection is open
    server.kill()
    server.wait(10)
    gevent.joinall(readers, timeout=10)
    return us


if __name__ == "__main__":
    compare(
        MODES,
        _run,
        f"a message each every {INTERVAL_S * 1000:.0f} ms, µs of CPU per message received",
        _serve,
    )
