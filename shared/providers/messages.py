"""The providers' websocket messages, handled below the SDKs' per-message layers where
those cost the voice process most: JSON decoded with orjson where the SDKs would build a
pure-Python model of each message (Deepgram's results, Cartesia's audio), and Deepgram's
audio framed by websockets' protocol and written to the socket without the connection's
per-message context."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.connection import Connection

log = logging.getLogger(__name__)


def json_object(raw: str | bytes, provider: str) -> dict[str, Any] | None:
    """`raw` decoded, or None (with a warning) when it is not a JSON object: a message
    the reader skips, not one that ends the stream."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        log.warning("%s sent a message that is not a JSON object; ignored", provider)
        return None
    return message


def send_binary(connection: Connection, data: bytes) -> None:
    """`connection.send(data)` (websockets' sync connection) for a data message.

    Why not `send()`: its `send_context()` (a generator context manager with the checks a
    close needs) and `send_data()` (gevent's `sendall()`, see `send_all`) cost ~25 µs of
    the ~100 µs a message costs under load (`scripts/bench/provider_send.py`), at ~9
    Deepgram messages a second per call. This does what they do for a data message on an
    open connection: frame it under the connection's lock, so it never interleaves with
    the reader's pongs or a close, and write it. Raises ConnectionClosed when the
    connection is not open and OSError when the write fails; the caller ends the stream
    either way (websockets' own connection sees the same socket fail)."""
    with connection.protocol_mutex:
        protocol = connection.protocol
        if protocol.state is not State.OPEN:
            raise ConnectionClosed(
                protocol.close_rcvd, protocol.close_sent, protocol.close_rcvd_then_sent
            )
        protocol.send_binary(data)
        send_all(connection.socket, b"".join(protocol.data_to_send()))


def send_all(sock: Any, data: bytes) -> None:
    """`sock.sendall(data)`, with one `send()` first: gevent's `sendall()` asks the kernel
    for the socket's buffer size (a getsockopt) on every call, and a message nearly always
    fits at once."""
    if data and (sent := sock.send(data)) < len(data):
        sock.sendall(data[sent:])
