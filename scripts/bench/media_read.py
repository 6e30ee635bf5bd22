"""Micro-benchmark: CPU per caller frame to read Telnyx media websockets in one gevent
process: each socket's reader waiting on its own watcher, woken by the shared read ticker,
or not woken at all (the ticker's pump reads every socket in one greenlet).

    .venv/bin/python -m scripts.bench.media_read [--sockets 20,100,200] [--seconds 10]
                                                 [--rounds 2]

This process accepts `sockets` TCP connections and reads each with a `MediaSocket`
(web/voice/media_socket.py) in a greenlet of its own, as the voice worker does, counting
the messages. A feeder process (plain threads, its CPU not counted) sends every socket one
masked ~300-byte media frame every 20 ms, each socket on a phase of its own, evenly spread
over the 20 ms (Telnyx streams keep the phase their call started on; the feeder sends
whatever is due each time it wakes). Printed per run: this process's CPU
per frame received, without the ticker (`ticker=None`), with it, pumped by it (these three
ACKing every read, as Linux does by default), and pumped with delayed ACKs (the voice
worker's default, `VOICE_DELAYED_ACKS`), runs alternated.
"""

from __future__ import annotations

import sys

from gevent import monkey

if "--feed" not in sys.argv:  # the feeder runs on plain threads
    monkey.patch_all()

import argparse
import json
import socket
import subprocess
import time

import gevent
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

FRAME_S = 0.020
PAYLOAD = "/" * 216  # base64 of 160 bytes of μ-law silence, by length


def _frames(index: int, count: int) -> list[bytes]:
    """`count` masked text frames of a media message, their sequence numbers counting up."""
    peer = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    for seq in range(count):
        media = {"track": "inbound", "chunk": str(seq), "timestamp": str(20 * seq)}
        message = {"event": "media", "sequence_number": str(seq), "stream_id": f"s{index}"}
        peer.send_text(json.dumps({**message, "media": {**media, "payload": PAYLOAD}}).encode())
    return [bytes(frame) for frame in peer.data_to_send()]


def _feed(port: int, sockets: int, seconds: float) -> None:
    """The Telnyx end: connect, then one frame per socket every 20 ms, socket i at phase
    i/sockets of the 20 ms."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(sockets)]
    count = int(seconds / FRAME_S) + 1
    frames = [_frames(i, count) for i in range(sockets)]
    print("ready", flush=True)
    start = time.monotonic() + 0.1
    step = FRAME_S / sockets  # between two sockets' send instants
    for k in range(
        count * sockets
    ):  # the k-th send instant: frame k // sockets of socket k % sockets
        due = start + k * step
        if (late := due - time.monotonic()) > 0:
            time.sleep(late)
        conns[k % sockets].sendall(frames[k % sockets][k // sockets])
    for conn in conns:
        conn.close()


MODES = ("own watcher", "read ticker", "pump", "pump, delayed ACKs")


def _run(sockets: int, seconds: float, mode: str) -> float:
    """µs of this process's CPU per frame read, over the middle of the feed."""
    from scripts.bench.readers import cpu_us_per_message, read_until_closed
    from tests.shared.socket_doubles import Upgraded
    from web.voice.media_socket import MediaSocket
    from web.voice.read_ticker import read_ticker

    ticker = read_ticker() if mode != "own watcher" else None
    listener = socket.create_server(("127.0.0.1", 0), backlog=sockets)
    feed = [str(listener.getsockname()[1]), str(sockets), str(seconds)]
    feeder = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.media_read", "--feed", *feed],
        stdout=subprocess.PIPE,
        text=True,
    )
    received = [0]

    def count(message: bytes) -> None:
        received[0] += 1

    def read(conn: socket.socket) -> None:
        media = MediaSocket(
            Upgraded(conn),
            max_message_bytes=65536,
            ping_s=60,
            ticker=ticker,
            delayed_acks=mode == "pump, delayed ACKs",
        )

        def receive() -> bytes | None:
            if mode.startswith("pump"):
                media.pump(count)  # returns at the end of the stream
            return media.receive()

        read_until_closed(receive, media.close, received)

    readers = [gevent.spawn(read, listener.accept()[0]) for _ in range(sockets)]
    assert feeder.stdout is not None
    feeder.stdout.readline()  # "ready": every frame is built
    # The first fifth: connections settle; then the middle three fifths.
    us = cpu_us_per_message(received, seconds * 0.2, seconds * 0.6)
    gevent.joinall(readers, timeout=seconds + 10)
    feeder.wait(10)
    listener.close()
    return us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", default="20,100,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--feed", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        port, sockets, seconds = args.feed
        return _feed(int(port), int(sockets), float(seconds))
    for sockets in (int(s) for s in args.sockets.split(",")):
        runs: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(_run(sockets, args.seconds, mode))
        figures = "; ".join(
            f"{mode} {', '.join(f'{us:.1f}' for us in values)}" for mode, values in runs.items()
        )
        print(f"{sockets} sockets, µs of CPU per frame read: {figures}", flush=True)
    return None


if __name__ == "__main__":
    main()
