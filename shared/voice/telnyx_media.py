"""The Telnyx media-stream protocol as a pure serializer: JSON text ↔ small typed frames.

No I/O here (pipecat's lesson): the call loop owns the socket. Inbound: connected, start,
media, dtmf, mark, error, stop. Outbound: media, mark, clear. Sequence numbers, chunks
and timestamps arrive as strings.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


class StreamClosed(Exception):
    """The media websocket is gone (the caller hung up, Telnyx closed it): nothing more
    can be sent. Raised by the sender the voice process gives the loop."""


class Sender(Protocol):
    """Sends text messages to Telnyx in order, in one write; raises StreamClosed."""

    def __call__(self, *messages: str) -> None: ...


class ProtocolError(ValueError):
    """A frame that is not valid Telnyx media-stream JSON; the reason is the message."""


@dataclass(frozen=True, slots=True)
class Connected:
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_id: str
    call_control_id: str
    encoding: str
    sample_rate: int


@dataclass(slots=True)  # not frozen: 50 a second per call, and frozen costs 3x to build
class Media:
    sequence: int
    payload: bytes
    track: str
    # ms since the stream started, when Telnyx sent it: for lateness, not part of the audio
    timestamp: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Error:
    detail: dict[str, Any]


Frame = Connected | Start | Media | Dtmf | Mark | Stop | Error


def parse(text: str | bytes) -> Frame | None:
    """One inbound frame, or None for an event we do not use. ProtocolError if malformed."""
    try:
        message = orjson.loads(text)
        event = message["event"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ProtocolError("not a Telnyx media-stream JSON frame") from exc
    parser = _PARSERS.get(event)
    if parser is None:
        return None
    try:
        return parser(message)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProtocolError(f"malformed {event} frame: {exc}") from exc


def _media(message: dict[str, Any]) -> Media:
    media = message["media"]
    stamp = media.get("timestamp")
    return Media(
        int(message.get("sequence_number") or media.get("chunk") or 0),
        binascii.a2b_base64(media["payload"], strict_mode=True),
        str(media.get("track") or "inbound"),
        int(stamp) if type(stamp) is str and stamp.isdigit() else _timestamp(stamp),
    )


def _timestamp(value: Any) -> int | None:
    """`media.timestamp` (a string of ms): only measured, so a bad one is ignored."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _start(message: dict[str, Any]) -> Start:
    start = message["start"]
    media_format = start.get("media_format") or {}
    return Start(
        stream_id=str(message.get("stream_id") or ""),
        call_control_id=str(start["call_control_id"]),
        encoding=str(media_format.get("encoding") or "PCMU"),
        sample_rate=int(media_format.get("sample_rate") or 8000),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], Frame]] = {
    "connected": lambda m: Connected(str(m.get("version", ""))),
    "start": _start,
    "media": _media,
    "dtmf": lambda m: Dtmf(str(m["dtmf"]["digit"])),
    "mark": lambda m: Mark(str(m["mark"]["name"])),
    "stop": lambda m: Stop(),
    "error": lambda m: Error({k: v for k, v in m.items() if k != "event"}),
}


def media_message(ulaw: bytes) -> str:
    # Hand-built: this runs for every outbound chunk of every call, and the payload is
    # base64 (no characters that need JSON escaping).
    return '{"event":"media","media":{"payload":"' + base64.b64encode(ulaw).decode() + '"}}'


def mark_message(name: str) -> str:
    """Hand-built like `media_message` (one per chunk); names are "<turn>:<bytes>", so
    only a name from elsewhere needs JSON's escaping."""
    if name.replace(":", "").isdigit():
        return '{"event":"mark","mark":{"name":"' + name + '"}}'
    return json.dumps({"event": "mark", "mark": {"name": name}})


CLEAR_MESSAGE = '{"event":"clear"}'


class Reorderer:
    """Puts inbound media back in sequence order (Telnyx does not guarantee it).

    Holds at most `depth` frames waiting for a gap to fill; a frame older than what was
    already released, or a duplicate, is dropped and counted.
    """

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self.next_seq: int | None = None
        self.pending: dict[int, bytes] = {}
        self.dropped = 0

    def push(self, sequence: int, payload: bytes) -> list[bytes]:
        if self.next_seq is None:
            self.next_seq = sequence
        if sequence < self.next_seq or sequence in self.pending:
            self.dropped += 1
            return []
        self.pending[sequence] = payload
        released: list[bytes] = []
        while self.next_seq in self.pending:
            released.append(self.pending.pop(self.next_seq))
            self.next_seq += 1
        if len(self.pending) > self.depth:  # the gap will not fill: skip it
            self.next_seq = min(self.pending)
            released.extend(self.push_pending())
        return released

    def push_pending(self) -> list[bytes]:
        released: list[bytes] = []
        while self.next_seq is not None and self.next_seq in self.pending:
            released.append(self.pending.pop(self.next_seq))
            self.next_seq += 1
        return released
