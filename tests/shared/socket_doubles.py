"""Test doubles around MediaSocket, shared by its tests and the read ticker's (also by the
scripts those run in fresh gevent interpreters: import after monkey-patching)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri


@dataclass
class Upgraded:
    """What MediaSocket takes from flask-sock: the socket and the `connected` flag."""

    sock: Any
    connected: bool = True


class RecvCounter:
    """Counts the raw recv() calls under a gevent socket; passes everything else on."""

    def __init__(self, raw: socket.socket) -> None:
        self.raw, self.calls = raw, 0

    def recv(self, *args: Any) -> bytes:
        self.calls += 1
        return self.raw.recv(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def count_recvs(gevent_socket: Any) -> RecvCounter:
    """Put a RecvCounter under `gevent_socket` (gevent keeps the real one in `_sock`)."""
    counter = RecvCounter(gevent_socket._sock)
    gevent_socket._sock = counter
    return counter


def phone(client: socket.socket, texts: list[bytes], gap_s: float, sent: list[int]) -> None:
    """Telnyx's end: each text as a masked frame `gap_s` apart (noting its index in
    `sent`), then a close of the socket without a close frame."""
    peer = ClientProtocol(parse_uri("ws://voice/media/telnyx"), state=State.OPEN)
    for n, text in enumerate(texts):
        time.sleep(gap_s)
        peer.send_text(text)
        client.sendall(b"".join(peer.data_to_send()))
        sent.append(n)
    time.sleep(gap_s)
    client.close()
