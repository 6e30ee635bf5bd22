"""RFC 6455 frame headers, read by hand where websockets' parser costs too much per frame.

Its sans-I/O protocol parses every frame in a generator, ~10-20 µs of pure Python a frame;
the voice worker's media sockets (`web.voice.media_socket`) and the benchmark's fake phones
(`scripts.fakes.telnyx_ws`) read whole, unfragmented data frames themselves and give the
protocol everything else (control frames, fragments, the close) as whole frames."""

from __future__ import annotations

import struct

WHOLE_DATA = (0x81, 0x82)  # first header byte: FIN, no RSV bits, text or binary
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
