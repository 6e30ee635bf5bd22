"""RFC 6455 frame headers, read and written by hand where websockets' protocol costs too
much per frame.

Its sans-I/O protocol parses every frame in a generator, ~10-20 µs of pure Python a frame;
the voice worker's media sockets (`web.voice.media_socket`) and the benchmark's fake phones
(`scripts.fakes.telnyx_ws`) read whole, unfragmented data frames themselves and give the
protocol everything else (control frames, fragments, the close) as whole frames. Writing a
text frame through it (a `Frame`, its checks and serialisation, the outgoing buffer) cost
3-5 µs against ~0.5 µs for `server_text`; the worker writes two per outbound chunk. And the
callers' audio to Deepgram goes in client frames made here (`client_binary`, ~2,000 a
second at 200 calls): websockets' `Frame.serialize` draws each frame's mask with
`secrets.token_bytes(4)`, a getrandom() system call a frame; `Masks` takes them from one
`os.urandom` read per 1,024 frames, still the OS's strong randomness (RFC 6455 §5.3 asks
masks that cannot be predicted, from a strong source of entropy)."""

from __future__ import annotations

import os
import struct

from websockets.speedups import apply_mask  # C; websockets builds it on every platform we use

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


MASK_POOL_BYTES = 4096  # masks for 1,024 frames per os.urandom call


class Masks:
    """4-byte frame masks from the OS's random source, read in bulk (see the docstring)."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(MASK_POOL_BYTES), 0
        self._at = at + 4
        return self._pool[at : at + 4]


def client_binary(payload: bytes, mask: bytes) -> bytes:
    """`payload` as one whole binary frame from a client, masked with `mask` (4 bytes)."""
    length = len(payload)
    if length < 126:
        head = bytes((BINARY, MASKED | length))
    elif length < 0x10000:
        head = struct.pack("!BBH", BINARY, MASKED | 126, length)
    else:
        head = struct.pack("!BBQ", BINARY, MASKED | 127, length)
    return head + mask + apply_mask(payload, mask)
