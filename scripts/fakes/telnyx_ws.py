"""A client websocket over a plain socket, driven by its owner: no threads of its own.

`websockets`' sans-I/O `ClientProtocol` does the handshake, the parsing and the control
frames; the owner reads the socket when a selector says so and calls `feed`. Not
thread-safe: the owner serialises calls (FakeTelnyxCall holds its lock around every one).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from shared.ws_frames import BINARY, MASKED, WHOLE_DATA, frame_at

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

OPEN_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0  # a server that stops reading for this long is treated as gone
MAX_MESSAGE = 16 * 2**20  # Telnyx accepts up to 30 s of audio in one media message
RECV_BYTES = 1 << 18
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_STAMP_SPACE = socket.CMSG_SPACE(16)

Message = tuple[bool, bytes]  # (binary?, payload)


class WebSocketPipe:
    """One open client websocket: send text/binary/close, feed received bytes."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        with contextlib.suppress(OSError):  # not Linux: recv_stamped() uses the read's time
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = sock
        self.protocol = protocol
        self.early: list[Message] = []  # messages that came with the handshake response
        self._fragments: list[Frame] = []
        self._partial = b""  # the start of a frame (or of the handshake response) not all here
        self._head_read = protocol.state is not State.CONNECTING

    @classmethod
    def open(cls, url: str, headers: dict[str, str]) -> WebSocketPipe:
        """Connect to a ws:// URL and complete the opening handshake (blocking)."""
        uri = parse_uri(url)
        if uri.secure:
            raise ValueError("the fake speaks ws:// to local servers only")
        protocol = ClientProtocol(uri, max_size=MAX_MESSAGE)
        sock = socket.create_connection((uri.host, uri.port), timeout=OPEN_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        sock.sendall(b"".join(protocol.data_to_send()))
        pipe = cls(sock, protocol)
        while protocol.state is State.CONNECTING:
            pipe.early += pipe.feed(sock.recv(RECV_BYTES))
        # A server that accepts and closes at once (a refused stream) can send its close
        # frame in the same packet as the 101: the handshake still succeeded.
        if protocol.handshake_exc is not None:
            sock.close()
            raise ConnectionError(
                f"websocket handshake with {url} failed: {protocol.handshake_exc!r}"
            )
        sock.settimeout(SEND_TIMEOUT)
        return pipe

    def recv_stamped(self) -> tuple[bytes, float]:
        """What has arrived, and when (monotonic): the kernel's receive time of the last
        segment read (SO_TIMESTAMPNS), else now. Why: the owner's thread may get to the
        socket late on a busy machine, and a phone's playout starts when the audio
        arrived, not when a load generator's thread looked; never later than the read."""
        data, ancillary, _, _ = self.sock.recvmsg(RECV_BYTES, _STAMP_SPACE)
        now = time.monotonic()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                return data, min(now, now - (time.time() - seconds - nanoseconds / 1e9))
        return data, now

    def send_text(self, text: str) -> None:
        """Send one text message (raises OSError if the socket is gone)."""
        self._send_data(Opcode.TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        """Send one binary message."""
        self._send_data(Opcode.BINARY, data)

    def _send_data(self, opcode: Opcode, payload: bytes) -> None:
        """One unfragmented, masked data frame, framed here rather than by the protocol.
        The benchmark's phones send 50 frames a second per call from one core; through
        the protocol (`Frame.serialize` asks the kernel for each mask key with
        `secrets.token_bytes`) a media frame cost 23-25 us of CPU, here 11-15 us
        (socketpair, a reader thread draining it). A fake phone needs valid masking, not
        keys an attacker's script cannot guess."""
        if self.protocol.state is not State.OPEN:
            raise InvalidState(f"websocket is {self.protocol.state.name}: cannot send data")
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        mask = _MASKS.randbytes(4)
        self.sock.sendall(header + mask + apply_mask(payload, mask))

    def send_close(self, code: int = 1000) -> None:
        """Start the closing handshake."""
        self.protocol.send_close(code)
        self._flush()

    def feed(self, data: bytes) -> list[Message]:
        """Take bytes read from the socket (b"" at EOF); returns the complete messages.

        Whole unfragmented data frames are split off here (`shared.ws_frames`); the
        protocol gets everything else, always as whole frames, so its parser stays at a
        frame boundary. Its generator parser was ~14 % of a benchmark phone process's
        Python time at 200 calls (py-spy), on the core the phones share with the fakes."""
        buf = self._partial + data if self._partial else data
        self._partial = b""
        if not data:  # EOF: the protocol sees any partial frame, then the end
            return self._to_protocol(buf, eof=True)
        if self.protocol.state is State.CONNECTING and not self._head_read:
            end = buf.find(b"\r\n\r\n")
            if end < 0:  # the response's head is not all here yet
                self._partial = buf
                return []
            self._head_read = True
            messages = self._to_protocol(buf[: end + 4])  # a 101 has no body
            return messages + self._split(buf[end + 4 :])
        return self._split(buf)

    def _split(self, buf: bytes) -> list[Message]:
        messages: list[Message] = []
        pos, limit = 0, self.protocol.max_message_size
        while self.protocol.state is State.OPEN:
            found = frame_at(buf, pos)
            if found is not None and limit is not None and found[2] > limit:
                break  # the protocol refuses it (and closes) at once
            if found is None or found[1] > len(buf):
                self._partial = buf[pos:]  # the rest of this frame is yet to come
                self._flush()
                return messages
            start, end, _ = found
            if buf[pos] in WHOLE_DATA and not buf[pos + 1] & MASKED and not self._fragments:
                messages.append((buf[pos] == BINARY, buf[start:end]))
            else:
                messages += self._to_protocol(buf[pos:end])
            pos = end
        return messages + self._to_protocol(buf[pos:])  # closing, refused, or too large

    def _to_protocol(self, data: bytes, *, eof: bool = False) -> list[Message]:
        if data:
            self.protocol.receive_data(data)
        if eof:
            self.protocol.receive_eof()
        messages: list[Message] = []
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode in _DATA:
                self._fragments.append(event)
                if event.fin:
                    body = b"".join(f.data for f in self._fragments)
                    messages.append((self._fragments[0].opcode is Opcode.BINARY, body))
                    self._fragments = []
        self._flush()  # pongs and the closing handshake
        return messages

    @property
    def writable(self) -> bool:
        """True while messages can be sent (not once either side has started closing)."""
        return self.protocol.state is State.OPEN

    @property
    def closed(self) -> bool:
        """True once the websocket (and its TCP connection) has closed."""
        return self.protocol.state is State.CLOSED

    @property
    def close_reason(self) -> str:
        """The server's close code and reason, or "no close frame"."""
        close = self.protocol.close_rcvd
        return "no close frame" if close is None else f"{close.code} {close.reason}".strip()

    def close_socket(self, *, abort: bool = False) -> None:
        """Close the TCP connection; `abort` resets it (a dropped line, no FIN, no close)."""
        if abort:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _flush(self) -> None:
        out = self.protocol.data_to_send()
        if data := b"".join(out):
            self.sock.sendall(data)
        if out and out[-1] == b"":
            self.sock.shutdown(socket.SHUT_WR)


_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
_MASKS = random.Random()
