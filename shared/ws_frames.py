"""RFC 6455 frame headers, read and written by hand where websockets' protocol costs too
much per frame.

Its sans-I/O protocol parses every frame in a generator, ~10-20 µs of pure Python a frame;
the voice worker's media sockets (`web.voice.media_socket`) and the benchmark's fake phones
(`scripts.fakes.telnyx_ws`) read whole, unfragmented data frames themselves and give the
protocol everything else (control frames, fragments, the close) as whole frames. Writing a
text frame through it (a `Frame`, its checks and serialisation, the outgoing buffer) cost
3-5 µs against ~0.5 µs for `server_text`; the worker writes two per outbound chunk."""

from __future__ import annotations

import struct

TEXT = 0x81
WHOLE_DATA = (TEXT, 0x82)  # first header byte: FIN, no RSV bits, text or binary
BINARY = 0x82
MASKED = 0x80  # second header byte: the payload is masked (client to server)


def frame_at(buf: bytes, pos: int) -> tuple[int, int, int] | None:
    """The frame whose header starts at `pos`: (payload start, payload end, payload
    length), or None while its header is incomplete (RFC 6455 §5.2). With a mask, the
    payload starts after its 4-byte key (`buf[start - 4 : start]`)."""
    available = len(buf) - pos
    if available < 2:
        return None
    second = buf[pos + 1]
    length, header = second & 0x7F, 2
    if length == 126:
        if available < 4:
            return None
        length, header = struct.unpack_from("!H", buf, pos + 2)[0], 4
    elif length == 127:
        if available < 10:
            return None
        length, header = struct.unpack_from("!Q", buf, pos + 2)[0], 10
    if second & MASKED:
        header += 4
    start = pos + header
    return start, start + length, length


def server_text(payload: bytes) -> bytes:
    """`payload` as one whole, unmasked text frame (a server's to its client)."""
    length = len(payload)
    if length < 126:
        return bytes((TEXT, length)) + payload
    if length < 0x10000:
        return struct.pack("!BBH", TEXT, 126, length) + payload
    return struct.pack("!BBQ", TEXT, 127, length) + payload
