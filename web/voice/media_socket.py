"""The Telnyx media websocket, read and written by the call's own greenlet.

flask-sock (simple-websocket) does the HTTP upgrade; from then on this class owns the
socket. Why not simple-websocket's `receive()`: it reads in a background thread of its own
and hands every message over through an Event, two more greenlet switches for each 20 ms
frame of every call, and frames with wsproto, pure Python (13 µs per media frame here
against 3.7 µs for websockets' sans-I/O protocol, C-accelerated unmasking). At 50 inbound
frames a second per call, those hand-offs were most of an open line's cost. So the reader
greenlet recv()s and parses here, with the same protocol object for what is not a whole
data frame (below). The reader is woken by the process's read ticker (`read_ticker.py`)
when there is one, and `pump()` hands the steady stream of data frames to the ticker's
pump, which reads them in its own greenlet with no greenlet switch per frame.

Outbound: text messages are framed by hand (`server_text`, one header), the protocol
object writes only its control frames (pong, ping, close). `send()` may wait for the
socket; `send_now()` never does, for the pump, which steps every call's playout.

Inbound framing has a fast path, written here because it is the hottest code of the voice
process: websockets' parser is a chain of generators (`read_exact` per header field), which
under load cost ~28 % of the worker's CPU at 100 calls (py-spy --native). A complete, masked,
unfragmented text or binary frame of at most `max_message_bytes` (every Telnyx media frame)
is split off and unmasked here (websockets' C `apply_mask`); every other frame (control
frames, fragments, unmasked or RSV-flagged frames, oversized ones) is handed whole to the
protocol object, which validates it, answers pings and closes, and fails the connection on
a violation exactly as before. Frames are only split at their boundaries, so the protocol
never sees a partial frame that the fast path also reads.

Not negotiated: permessage-deflate (see `without_extensions`). Pings: a watchdog (one
sleeping greenlet per call) pings after `ping_s` with nothing received and, after a second
quiet period, shuts the socket down: the reader sees EOF, and a write stuck on a peer that
stopped reading fails instead of hanging the call. Not a socket timeout: gevent arms a
timer for every wait of a socket that has one, i.e. for each 20 ms frame (7 % of the
process's CPU at 80 calls).

Delayed ACKs (`delayed_acks`, on unless VOICE_DELAYED_ACKS=false): Linux ACKs every read
that empties the socket of a small pushed segment unless the connection looks interactive,
so each 20 ms frame cost an ACK sent back to Telnyx (~7 of the ~25 µs a pumped frame cost,
scripts/bench/media_read.py). After each pumped read the socket is put back in delayed-ACK
mode (TCP_QUICKACK off; the kernel leaves it on its own, hence per read): the kernel then
ACKs every second segment or on its delayed-ACK timer, as RFC 1122 lets a receiver. This
only delays ACKs, never the frames we receive; a sender that held frames for their ACK
(Nagle's algorithm, i.e. no TCP_NODELAY) would be slowed by it, which is what the switch
is for.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from simple_websocket import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask  # C; websockets builds it on every platform we use

from shared.background import start_worker
from shared.providers.messages import send_all
from shared.realtime import acquire_now
from shared.ws_frames import MASKED, WHOLE_DATA, frame_at, server_text
from web.voice.read_ticker import ReadTicker

RECV_BYTES = 65536
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
T = TypeVar("T")


def _recv_now(raw: socket.socket) -> bytes:
    return raw.recv(RECV_BYTES)


# The pump's read of a raw socket, by a name the benchmark's worker hooks rebind to time it
# (scripts/bench/worker_hooks): compiled (shared/native.py), the class takes no patch.
pump_recv: Callable[[socket.socket], bytes] = _recv_now


class DeferredReader:
    """simple-websocket's `thread_class`: its reader thread is never started, since the
    handler reads the socket itself (MediaSocket). Set through SOCK_SERVER_OPTIONS."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.name = "media-reader"  # simple-websocket renames it; `target` is never run

    def start(self) -> None:
        """Not started: see the class docstring."""


def without_extensions(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: drop the client's Sec-WebSocket-Extensions offer. simple-websocket
    would accept permessage-deflate, i.e. zlib both ways on every 20 ms frame of base64
    μ-law, which barely compresses; and MediaSocket frames without extensions."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return app(environ, start_response)

    return middleware


# What flask-sock reads of its Server after the handler returns: its `ws.close()` (which
# sends nothing once `connected` is false) and the response it returns (`mode`).
FLASK_SOCK_READS = ("mode", "close_reason", "close_message")


def _hand_back(ws: Any) -> None:
    """Give flask-sock back a Server holding only what it still reads, `connected` false.

    Why: flask-sock keeps the Server in a class it makes for each connection (its
    response's `__call__` closes over it), and a class is always in a reference cycle (its
    `__mro__` holds it). The Server holds the request's environ, gunicorn's request,
    parser and socket, and wsproto's state: ~60 objects a call that would stay until a full
    collection, which the voice worker runs only when idle (gc_policy.py)."""
    kept = {name: ws.__dict__[name] for name in FLASK_SOCK_READS if name in ws.__dict__}
    ws.__dict__.clear()
    ws.__dict__.update(kept, connected=False)


class MediaSocket:
    """One accepted websocket (`ws`: flask-sock's simple_websocket.Server, reader unstarted).

    `receive` is for one greenlet (the call's reader); `send` and `close` may come from
    any greenlet of the call: writes are serialised so frames never interleave.
    """

    def __init__(
        self,
        ws: Any,
        *,
        max_message_bytes: int,
        ping_s: float,
        ticker: ReadTicker | None = None,
        delayed_acks: bool = True,
    ) -> None:
        self._ws = ws
        self._sock = ws.sock
        self._ticker = ticker
        self._fileno = self._sock.fileno() if ticker is not None else -1
        # The non-blocking socket under gevent's wrapper: the pump must never wait on it.
        self._raw = getattr(self._sock, "_sock", None) if ticker is not None else None
        raw = self._raw
        self._delay_acks = (
            functools.partial(raw.setsockopt, socket.IPPROTO_TCP, _QUICKACK, 0)
            if delayed_acks and _QUICKACK is not None and raw is not None and _is_tcp(raw)
            else None
        )
        self._protocol = ServerProtocol(state=State.OPEN, max_size=max_message_bytes)
        self._write_lock = threading.Lock()  # a gevent lock once threading is patched
        self._messages: deque[bytes] = deque()
        self._fragments: list[bytes] = []
        self._partial = b""  # the start of a frame not fully received yet
        self._refeed = False  # `_partial` holds whole frames the pump handed back unread
        self._handler: Callable[[bytes], Any] | None = None  # while pumped
        self._handled: Any = None  # what the handler returned when it stopped the pump
        self._failure: Exception | None = None  # what it raised
        self._max_size = max_message_bytes
        self._ping_s = ping_s
        self._timeout: float | None = None  # the socket's own, for receive(timeout) only
        # Waits for data before each untimed read: on the process's ticker when there is
        # one (read_ticker.py), else on the socket's own watcher.
        self._wait_readable = (
            ticker.readable(self._fileno) if ticker is not None else _readiness_wait(self._sock)
        )
        self._heard = False  # something arrived since the watchdog last looked
        self._stopped = threading.Event()
        self._watchdog = start_worker(self._watch, "media-ping")

    def receive(self, timeout: float | None = None) -> bytes | None:
        """The next message (text as its UTF-8 bytes), None after `timeout` s without any
        data. Raises ConnectionClosed when the stream has ended."""
        while not self._messages:
            if self._protocol.state is not State.OPEN:
                raise ConnectionClosed()
            if self._refeed:
                self._refeed = False
                unread, self._partial = self._partial, b""
                self._feed(unread)
                continue
            data = self._recv(timeout)
            if data is None:
                return None
            self._feed(data)
        return self._messages.popleft()

    def pump(self, handler: Callable[[bytes], T | None]) -> T | None:
        """Have the read ticker's pump read this stream: `handler` gets each message, in
        the pump's greenlet, so it must never wait. Returns the first result other than
        None the handler gives (the pump stops there), or None once the stream needs this
        greenlet's `receive()`: a frame other than a whole data frame, the end of the
        stream, or no ticker. What the pump has not handled stays for `receive()`, in order.
        Raises what the handler raised."""
        while self._messages:  # received by `receive()` already: handled here
            if (result := handler(self._messages.popleft())) is not None:
                return result
        if (
            self._ticker is None
            or self._raw is None
            or self._refeed
            or self._fragments
            or self._protocol.state is not State.OPEN
        ):
            return None
        self._handler = handler
        try:
            self._ticker.pump(self._fileno, self._pump_read)
        finally:
            self._handler = None
        result, self._handled = self._handled, None
        if (failure := self._failure) is not None:
            self._failure = None
            raise failure
        return result

    def send(self, *texts: str) -> None:
        """Send text messages in one write; ConnectionClosed (or OSError) once the stream
        is gone."""
        with self._write_lock:
            if self._protocol.state is not State.OPEN:
                raise ConnectionClosed()
            self._sendall([server_text(text.encode()) for text in texts], quiet=False)

    @property
    def can_send_now(self) -> bool:
        """`send_now` can write (it has the non-blocking socket under gevent's wrapper)."""
        return self._raw is not None

    def send_now(self, *texts: str) -> bool:
        """`send()` for the read ticker's pump, which must never wait: True when the
        messages went (or their rest is being finished by a worker that holds the write
        lock), False when nothing was sent because it would have had to wait (the lock is
        held, the socket's buffer is full): send again later. Raises as `send`.
        A refused message is simply framed again: a server's frames carry no mask."""
        if self._raw is None or not acquire_now(self._write_lock):
            return False
        handed_off = False
        try:
            if self._protocol.state is not State.OPEN:
                raise ConnectionClosed()
            out = b"".join([server_text(text.encode()) for text in texts])
            try:
                sent = self._raw.send(out)
            except BlockingIOError:
                return False
            if sent < len(out):
                start_worker(functools.partial(self._finish_send, out[sent:]), "media-send-rest")
                handed_off = True
            return True
        finally:
            if not handed_off:
                self._write_lock.release()

    def _finish_send(self, rest: bytes) -> None:
        """The rest of a `send_now` that the socket took only part of, the lock held."""
        try:
            self._sendall([rest], quiet=True)  # a gone peer: the reader sees it
        finally:
            self._write_lock.release()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (idempotent); the socket is gunicorn's to close."""
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.forget(self._fileno)
        with self._write_lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code, reason)
                self._flush(quiet=True)
        _hand_back(self._ws)

    # -- reading -------------------------------------------------------------------------
    def _recv(self, timeout: float | None) -> bytes | None:
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout
        try:
            if timeout is None and self._wait_readable is not None:
                self._wait_readable()
            data: bytes = self._sock.recv(RECV_BYTES)
        except TimeoutError:
            return None
        except OSError:
            data = b""
        self._heard = True
        return data

    def _feed(self, data: bytes) -> None:
        if not data or self._protocol.state is not State.OPEN:
            self._to_protocol(data)
            return
        buf = self._partial + data if self._partial else data
        pos = 0
        while (frame := frame_at(buf, pos)) is not None:
            start, end, length = frame
            if length > self._max_size:
                self._partial = b""
                self._to_protocol(buf[pos:])  # the protocol fails it (1009)
                return
            if end > len(buf):
                break
            if buf[pos] in WHOLE_DATA and buf[pos + 1] & MASKED and not self._fragments:
                self._messages.append(apply_mask(buf[start:end], buf[start - 4 : start]))
            else:
                self._to_protocol(buf[pos:end])
                if self._protocol.state is not State.OPEN:  # closing: the rest is its own
                    self._partial = b""
                    if rest := buf[end:]:
                        self._to_protocol(rest)
                    return
            pos = end
        self._partial = buf[pos:]

    def _pump_read(self) -> bool:
        """In the pump's greenlet: read what has arrived; False to hand the stream back to
        its reader (see `pump`)."""
        try:
            data = self._pump_recv()
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False  # the end of the stream, or an error: the reader's recv meets it
        if self._delay_acks is not None:
            try:  # noqa: SIM105  # per frame: contextlib.suppress costs more than the try
                self._delay_acks()
            except OSError:
                pass  # the stream is going: the next read meets its end
        self._heard = True
        return self._pump_frames(self._partial + data if self._partial else data)

    def _pump_recv(self) -> bytes:
        """One read of the raw socket, never waiting."""
        assert self._raw is not None
        return pump_recv(self._raw)

    def _pump_frames(self, buf: bytes) -> bool:
        """Hand each whole data frame in `buf` to the handler, up to the first other one."""
        assert self._handler is not None
        pos, size, handler = 0, len(buf), self._handler
        while (frame := frame_at(buf, pos)) is not None:
            start, end, length = frame
            if length > self._max_size or buf[pos] not in WHOLE_DATA or not buf[pos + 1] & MASKED:
                return self._hand_back(buf, pos)
            if end > size:
                break
            message = apply_mask(buf[start:end], buf[start - 4 : start])
            pos = end
            try:
                result = handler(message)
            except Exception as exc:
                self._failure = exc
                return self._hand_back(buf, pos)
            if result is not None:
                self._handled = result
                return self._hand_back(buf, pos)
        self._partial = buf[pos:]
        return True

    def _hand_back(self, buf: bytes, pos: int) -> bool:
        """Keep what the pump did not handle, from `pos`, for `receive()`."""
        self._partial = buf[pos:]
        self._refeed = bool(self._partial)
        return False

    def _to_protocol(self, data: bytes) -> None:
        """Whole frames through websockets' protocol; b"" is the end of the stream."""
        protocol = self._protocol
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        for frame in protocol.events_received():
            if not isinstance(frame, Frame) or frame.opcode not in _DATA:
                continue  # control frames: the protocol answers pings and closes itself
            if frame.fin and not self._fragments:
                self._messages.append(bytes(frame.data))
            else:
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    self._messages.append(b"".join(self._fragments))
                    self._fragments = []
        # Pongs, the reply to a close, or the close after a protocol error (usually none:
        # the lock is taken only when there is something to send).
        if out := protocol.data_to_send():
            with self._write_lock:
                self._sendall(out, quiet=True)

    def _watch(self) -> None:
        """Ping a quiet peer; drop the connection if it stays quiet."""
        pinged = False
        while not self._stopped.wait(self._ping_s):
            if self._heard:
                self._heard, pinged = False, False
            elif not pinged:
                pinged = True
                # Its own thread: if the peer stopped reading, this send may never return,
                # and the watchdog must still get to the shutdown that ends it.
                start_worker(self._ping, "media-ping-send")
            else:
                self._drop()
                return

    def _ping(self) -> None:
        with self._write_lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_ping(b"")
                self._flush(quiet=True)

    def _drop(self) -> None:
        """No data and no pong: end the stream without a close frame (the peer is not
        listening; RFC 6455 §7.1.1 allows it)."""
        self._stopped.set()
        self._ws.connected = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _flush(self, *, quiet: bool = False) -> None:
        """Send what the protocol has queued (holding the write lock)."""
        self._sendall(self._protocol.data_to_send(), quiet=quiet)

    def _sendall(self, out: list[bytes], *, quiet: bool) -> None:
        """`quiet`: a gone peer is not an error here (the reader sees it on its next recv)."""
        try:
            send_all(self._sock, b"".join(out))
        except OSError:
            if not quiet:
                raise


def _is_tcp(sock: Any) -> bool:
    family = getattr(sock, "family", None)
    return family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM


def _readiness_wait(sock: Any) -> Callable[[], None] | None:
    """Wait until `sock` (a gevent socket) is readable, on its own read watcher; None for
    a plain socket. Why: gevent's recv() tries the socket before it waits, and Telnyx's
    frames come 20 ms apart, so nearly every try fails (a recvfrom syscall and an
    exception per frame). Waiting first saved ~7 µs of the ~25 µs a read costs here
    (docs/voice-benchmark-log.md). `_wait`/`_read_event` are gevent's socket internals (its
    own recv uses them); gevent is pinned, and the media socket tests run through them."""
    wait, watcher = getattr(sock, "_wait", None), getattr(sock, "_read_event", None)
    if wait is None or watcher is None:
        return None
    return functools.partial(wait, watcher)
