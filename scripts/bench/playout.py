"""Micro-benchmark: CPU per outbound chunk of agent audio in one gevent process, each call's
playout paced by a greenlet of its own (`Playout.run`) or stepped by the read ticker's
rounds (`Pacer`, the voice worker's way).

    .venv/bin/python -m scripts.bench.playout [--connections 100] [--seconds 8] [--rounds 3]

This process opens `connections` TCP connections to a drain (a process of its own that reads
and drops everything; its CPU is not counted) and gives each a `MediaSocket`
(web/voice/media_socket.py) and a `Playout` with the voice worker's defaults (100 ms
chunks, 200 ms lead). A greenlet per call plays TTS: 3 s answers in 100 ms pieces at twice
real time, then a 1 s pause for the caller's turn, the calls' phases spread. Printed: this
process's CPU per chunk sent (media + mark, one write) in each mode, runs alternated.
"""

from __future__ import annotations

import sys

from gevent import monkey

if "--serve" not in sys.argv:  # the drain runs on plain threads
    monkey.patch_all()

import random
import selectors
import socket
import time

import gevent

PIECE = b"\x7f" * 800  # 100 ms of 8 kHz μ-law, as a TTS message brings it
PIECES = 30  # a 3 s answer
MODES = ("greenlet per call", "read ticker's rounds")


def _drain(seconds: float) -> None:
    """Accept connections and read everything they send, until they have all closed."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    print(listener.getsockname()[1], flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    deadline, open_ = time.monotonic() + seconds + 30, 0
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ)
                open_ += 1
            elif not key.fileobj.recv(1 << 16):  # type: ignore[union-attr]
                selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                open_ -= 1
                if not open_:
                    return


def _answers(playout: object, start_after: float) -> None:
    """TTS for one call: answer after answer, each heard (by the clock) before the next."""
    from shared.voice.playout import Playout

    assert isinstance(playout, Playout)
    gevent.sleep(start_after)
    turn = 0
    while not playout.closed:
        turn += 1
        audio = playout.begin_turn(turn)
        for _ in range(PIECES):
            playout.add(audio, PIECE)
            gevent.sleep(0.05)
        playout.finish(audio)
        playout.idle.wait()
        gevent.sleep(max(0.0, playout.play_end - time.monotonic()) + 1.0)


def _run(connections: int, seconds: float, mode: str) -> float:
    """µs of this process's CPU per chunk sent, over the middle of the run."""
    from scripts.bench.readers import cpu_us_per_message, server_port
    from shared.voice.playout import Pacer, Playout
    from tests.shared.socket_doubles import Upgraded
    from web.voice.media_socket import MediaSocket
    from web.voice.read_ticker import read_ticker

    drain, port = server_port("scripts.bench.playout", seconds)
    ticker = read_ticker()
    assert ticker is not None, "the read ticker needs epoll (Linux)"
    chunks = [0]

    def counted(send: object) -> object:
        def sending(*messages: str) -> object:
            chunks[0] += 1
            return send(*messages)  # type: ignore[operator]

        return sending

    sockets, playouts, greenlets = [], [], []
    for _ in range(connections):
        conn = socket.create_connection(("127.0.0.1", port))
        media = MediaSocket(Upgraded(conn), max_message_bytes=1024, ping_s=60, ticker=ticker)
        pacer = None
        if mode == MODES[1]:
            pacer = Pacer(ticker.at, counted(media.send_now))  # type: ignore[arg-type]
        playout = Playout(counted(media.send), pacer=pacer)  # type: ignore[arg-type]
        if playout.needs_greenlet:
            greenlets.append(gevent.spawn(playout.run))
        greenlets.append(gevent.spawn(_answers, playout, random.uniform(0, 1)))
        sockets.append((conn, media))
        playouts.append(playout)
    us = cpu_us_per_message(chunks, seconds * 0.25, seconds * 0.75)
    for playout in playouts:
        playout.close()
    gevent.killall(greenlets, timeout=5)
    for conn, media in sockets:
        media.close()
        conn.close()
    drain.wait(20)
    return us


def main() -> None:
    from scripts.bench.readers import compare

    compare(MODES, _run, "µs of CPU per outbound chunk (media + mark)", _drain)


if __name__ == "__main__":
    main()
