"""The providers' websocket messages, handled below the SDKs' per-message layers where
those cost the voice process most: JSON decoded with orjson where the SDKs would build a
pure-Python model of each message (Deepgram's results, Cartesia's audio), each message
handled in websockets' own reader (`deliver_messages`), and Deepgram's audio framed by
websockets' protocol and written without the connection's per-message context
(`send_binary`), from the read ticker's pump when the socket takes it at once
(`send_binary_now`); in the voice process the messages are read by that pump too
(`_PumpedReads`)."""

from __future__ import annotations

import functools
import logging
import queue
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.streams import StreamReader
from websockets.sync.connection import Connection

from shared.background import start_worker
from shared.realtime import acquire_now
from shared.ws_frames import BINARY, MASKED, WHOLE_DATA, Masks, client_binary, frame_at

_AT_EOF = StreamReader.at_eof.__code__

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
        send_all(connection.socket, _binary_frame(protocol, data))


class NowWriter:
    """Writes to a gevent socket that never wait (`nonblocking_writer`)."""

    __slots__ = ("tls", "write")

    def __init__(self, write: Callable[[bytes], int], tls: bool) -> None:
        self.write, self.tls = write, tls


def nonblocking_writer(sock: Any) -> NowWriter | None:
    """A write of `sock` that never waits (bytes written, 0 when it would have to), or
    None when there is none: gevent's sockets keep the non-blocking socket (or TLS object)
    that their own send waits on; a plain socket's send may block (threads, not the pump)."""
    if not type(sock).__module__.startswith("gevent"):
        return None
    if (sslobj := getattr(sock, "_sslobj", None)) is not None:
        return NowWriter(functools.partial(_ssl_write, sslobj), tls=True)
    if (raw := getattr(sock, "_sock", None)) is not None:
        return NowWriter(functools.partial(_raw_write, raw), tls=False)
    return None


_MASKS = Masks()


def _binary_frame(protocol: Protocol, data: bytes) -> bytes:
    """`data` as the open client `protocol`'s next frame (holding the connection's lock):
    framed here (`shared.ws_frames.client_binary`, masks drawn in bulk) where websockets
    would send exactly that frame, else by websockets (an extension such as
    permessage-deflate transforms frames; a fragmented message is being sent)."""
    if (
        protocol.side is Side.CLIENT
        and not protocol.extensions
        and not protocol.expect_continuation_frame
    ):
        return client_binary(data, _MASKS.next())
    protocol.send_binary(data)
    return b"".join(protocol.data_to_send())


def send_binary_now(connection: Connection, data: bytes, writer: NowWriter) -> bool:
    """`send_binary` for a caller that must never wait (the read ticker's pump), through
    `writer` (`nonblocking_writer(connection.socket)`): True when the message went out,
    False when nothing was sent (queue it for `send_binary`, which waits, and raises what
    is wrong).

    Why: the pump completes a Deepgram message every 40-200 ms per call; handing each to
    the stream's sender greenlet cost a wake-up of it through the hub and two switches (at
    100 calls ~840 a second). Here the pump writes it when the connection's lock is free
    and its socket takes the frame whole without waiting (nearly always: a few hundred
    bytes into a socket buffer that Deepgram drains). If the socket takes only part (a TLS
    record half written, a nearly full buffer), the rest is written by a worker of its own
    that holds the lock until it is done, so no frame interleaves with it."""
    mutex = connection.protocol_mutex
    if not acquire_now(mutex):
        return False
    handed_off = False
    try:
        protocol = connection.protocol
        if protocol.state is not State.OPEN:
            return False
        out = _binary_frame(protocol, data)
        try:
            sent = writer.write(out)
        except OSError:
            return False  # nothing written: the queued send meets the error and reports it
        if sent >= len(out):
            return True
        if sent == 0 and not writer.tls:
            return False  # nothing taken: queued, and framed again by the sender
        # OpenSSL must be given the same bytes again (it kept its place); TCP goes on.
        rest = out if writer.tls else out[sent:]
        start_worker(functools.partial(_finish_write, connection, rest), "send-rest")
        handed_off = True
        return True
    finally:
        if not handed_off:
            mutex.release()


def _raw_write(raw: Any, data: bytes) -> int:
    try:
        return int(raw.send(data))
    except BlockingIOError:
        return 0


def _ssl_write(sslobj: Any, data: bytes) -> int:
    try:
        return int(sslobj.write(data))
    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
        return 0


def _finish_write(connection: Connection, rest: bytes) -> None:
    """Write the rest of a frame that `send_binary_now` began, then free the lock it
    handed over. A failure is left for the connection's next read or write to meet."""
    try:
        connection.socket.sendall(rest)
    except OSError:
        log.info("a provider socket failed in the middle of a frame")
    finally:
        connection.protocol_mutex.release()


def send_all(sock: Any, data: bytes) -> None:
    """`sock.sendall(data)`, with one `send()` first: gevent's `sendall()` asks the kernel
    for the socket's buffer size (a getsockopt) on every call, and a message nearly always
    fits at once."""
    if data and (sent := sock.send(data)) < len(data):
        sock.sendall(data[sent:])


OnMessage = Callable[[bytes, bool], None]  # (the message, whether it is text)
OnEnd = Callable[[BaseException], None]


def deliver_messages(
    connection: Connection, on_message: OnMessage, on_end: OnEnd, *, split_frames: bool = True
) -> None:
    """From now on, hand each message of `connection` to `on_message` in websockets' own
    reader (a thread; a greenlet under gevent), and call `on_end` once, in a worker of its
    own, when the stream ends: with the connection's `ConnectionClosed`, or with what
    `on_message` raised (nothing more is delivered then; ending the connection is the
    caller's).

    Why: websockets' sync connection queues each message in its `Assembler` for a
    `recv()` in another thread, so under gevent every provider message cost two greenlet
    runs and a queue hand-off: 128 against 106 µs of CPU a message, mean of three runs of
    `scripts/bench/provider_read.py` (~700 messages a second at 100 calls). websockets has
    no option for it; the connection takes each message through its `recv_messages`
    attribute (`put` per frame, `close` at the end), which this replaces.

    Call it before anything is sent on the connection (neither Deepgram nor Cartesia speaks
    first): messages already queued are delivered first, and `recv()` is no longer
    available. With `split_frames` (the default; off only to measure it) whole data frames
    are also split off below websockets' parser (`_FrameSplitter`)."""
    splitter = _FrameSplitter.install(connection.protocol) if split_frames else None
    delivery = _Delivery(connection, on_message, on_end)
    assembler = connection.recv_messages
    assembler.mutex.acquire()  # websockets' reader queues each frame holding it
    with delivery.order:  # frames put from now on wait for those queued before
        try:
            connection.recv_messages = delivery  # type: ignore[assignment]
            queued, assembler.frames = assembler.frames, _Forward(delivery)  # type: ignore[assignment]
            ended = assembler.closed
            if assembler.paused:  # its queue was full: the reader waits for it to drain
                assembler.paused = False
                assembler.resume()
        finally:
            assembler.mutex.release()
        for frame in _drain(queued):
            delivery.deliver(frame)
    if ended:
        delivery.close()
    elif splitter is not None and (pump := _PumpedReads.pump) is not None:
        _PumpedReads.install(connection, delivery, splitter, pump)


def _drain(frames: queue.SimpleQueue[Frame | None]) -> list[Frame]:
    drained = []
    try:
        while True:
            if (frame := frames.get(block=False)) is not None:
                drained.append(frame)
    except queue.Empty:
        return drained


def _ignore_message(message: bytes, text: bool) -> None:
    pass


def _ignore_end(reason: BaseException) -> None:
    pass


class _Forward:
    """The replaced assembler's queue: a reader thread that was already in its `put()`
    (waiting for its lock) hands its frame on instead of leaving it there."""

    def __init__(self, delivery: _Delivery) -> None:
        self.put = delivery.put

    def qsize(self) -> int:
        return 0  # nothing is ever queued: the assembler never pauses the reader


class _Delivery:
    """What `deliver_messages` puts in place of the connection's assembler."""

    def __init__(self, connection: Connection, on_message: OnMessage, on_end: OnEnd) -> None:
        # The protocol, not the connection, which keeps this as its `recv_messages`: a
        # cycle with the whole stream behind it, for the full collection to find.
        self._protocol = connection.protocol
        self._on_message = on_message
        self._on_end = on_end
        self._fragments: list[bytes] = []
        self._text = False
        self._ended = False
        self._lock = threading.Lock()
        self.order = threading.Lock()  # taken only while the frames queued before are handed on

    def put(self, frame: Frame) -> None:
        """A data frame (websockets' reader, holding no lock of the connection's)."""
        with self.order:
            self.deliver(frame)

    def deliver(self, frame: Frame) -> None:
        """(holding `order`)"""
        if self._ended:
            return
        if frame.opcode is not Opcode.CONT:
            self._text, self._fragments = frame.opcode is Opcode.TEXT, []
        if not frame.fin:
            self._fragments.append(bytes(frame.data))
            return
        message = b"".join([*self._fragments, frame.data]) if self._fragments else frame.data
        self._fragments = []
        try:
            self._on_message(bytes(message), self._text)
        except Exception as exc:
            self._end(exc)

    def deliver_whole(self, message: bytes, text: bool) -> None:
        """A whole, unfragmented data message (the pump, holding `order`)."""
        if self._ended:
            return
        self._text, self._fragments = text, []
        try:
            self._on_message(message, text)
        except Exception as exc:
            self._end(exc)

    def close(self) -> None:
        """The stream has ended (websockets calls this holding the connection's lock, so
        `on_end`, which may close the connection, runs in a worker of its own)."""
        self._end(self._protocol.close_exc)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this connection's messages go to a handler (deliver_messages)")

    get_iter = get

    def _end(self, reason: BaseException) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        start_worker(functools.partial(self._finish, reason), "websocket-end")

    def _finish(self, reason: BaseException) -> None:
        try:
            self._on_end(reason)
        finally:
            # The handlers' owner keeps the connection, which keeps this: a cycle for the
            # full collection to find, with the whole stream behind it, unless the
            # handlers go (web/voice/gc_policy.py).
            self._on_message, self._on_end = _ignore_message, _ignore_end


class _FrameSplitter:
    """Takes the place of a client protocol's `receive_data`, `receive_eof` and
    `events_received`: a whole, unfragmented, unmasked text or binary frame (nearly every
    provider message) is split off by hand (`shared.ws_frames`), and everything else (pings,
    fragments, the close, a frame over the size limit, all once the close has begun) goes to
    the protocol, always as whole frames, so its parser stays at a frame boundary.

    Why: websockets' generator parser was ~12 µs of the ~77 µs a provider message costs
    the voice process (`scripts/bench/provider_read.py`), ~2,000 messages a second at 200
    calls (Deepgram's results, Cartesia's audio). It keeps only a weak reference to its
    protocol, which holds it until the end of the stream: no cycle of its own, and nothing
    added to the protocol's (its parser generator holds it) for a collection to walk."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = weakref.ref(protocol)
        self._partial = b""  # the start of a frame not all here yet
        self._events: list[Any] = []  # frames and protocol events, in order, not taken yet

    @classmethod
    def install(cls, protocol: Protocol) -> _FrameSplitter | None:
        """Only at a frame boundary (`_at_frame_boundary`), else the protocol stays as it is
        (None)."""
        if not _at_frame_boundary(protocol):
            return None
        splitter = cls(protocol)
        protocol.receive_data = splitter.receive_data  # type: ignore[method-assign]
        protocol.receive_eof = splitter.receive_eof  # type: ignore[method-assign]
        protocol.events_received = splitter.events_received  # type: ignore[method-assign]
        return splitter

    @property
    def at_boundary(self) -> bool:
        """No part of a frame kept, and no frame split off and not yet taken."""
        return not self._partial and not self._events

    def receive_data(self, data: bytes | bytearray) -> None:
        protocol = self._protocol()
        if protocol is None:
            return
        buf = self._partial + bytes(data) if self._partial else bytes(data)
        self._partial = b""
        pos, limit = 0, protocol.max_message_size
        while protocol.state is State.OPEN:
            found = frame_at(buf, pos)
            if found is not None and limit is not None and found[2] > limit:
                break  # the protocol refuses it, and closes
            if found is None or found[1] > len(buf):
                self._partial = buf[pos:]
                return
            start, end, _ = found
            first = buf[pos]
            if first in WHOLE_DATA and not buf[pos + 1] & MASKED and protocol.current_size is None:
                opcode = Opcode.BINARY if first == BINARY else Opcode.TEXT
                self._events.append(Frame(opcode, buf[start:end]))
            else:
                self._to_protocol(protocol, buf[pos:end])
            pos = end
        if pos < len(buf):
            self._to_protocol(protocol, buf[pos:])

    def receive_eof(self) -> None:
        """The end of the stream: the protocol has the rest, and its own methods back (so
        nothing of this is left for a collection to find with the protocol's own cycles)."""
        protocol = self._protocol()
        if protocol is None:
            return
        if self._partial:
            self._to_protocol(protocol, self._partial)
            self._partial = b""
        Protocol.receive_eof(protocol)
        for name in ("receive_data", "receive_eof"):
            protocol.__dict__.pop(name, None)
        if not self._events:  # else the reader takes them first, through this
            protocol.__dict__.pop("events_received", None)

    def events_received(self) -> list[Any]:
        protocol = self._protocol()
        events, self._events = self._events, []
        if protocol is None:
            return events
        if "receive_eof" not in protocol.__dict__:  # ended: nothing more comes through here
            protocol.__dict__.pop("events_received", None)
        return events + Protocol.events_received(protocol)

    def _to_protocol(self, protocol: Protocol, data: bytes) -> None:
        Protocol.receive_data(protocol, data)
        self._events += Protocol.events_received(protocol)


class ReadPump(TypingProtocol):
    """The read ticker's side of `_PumpedReads` (web.voice.read_ticker.ReadTicker)."""

    def pump_reads(self, reads: Any) -> None: ...

    def end_reads(self, reads: Any) -> None: ...


_TLS_READS = 16  # records read at most in one pumped read (each up to 16 KiB)


def pump_reads_with(pump: ReadPump | None) -> None:
    """From now on connections whose messages go to a handler (`deliver_messages`) are read
    by `pump` (the voice process's read ticker; None: by websockets' reader), see
    `_PumpedReads`."""
    _PumpedReads.pump = pump


def delivered_by_pump() -> bool:
    """Whether the message being handled came through the read ticker's pump: the handler
    must then neither wait nor yield (every call's frames wait behind it)."""
    return _PumpedReads.delivering


class _PumpedReads:
    """A connection's socket read in the read ticker's pump, while its websockets reader
    waits in its selector (web.voice.read_ticker.TickerSelector): each read hands the whole,
    unmasked data frames at its start to the handler, in the pump's greenlet, which must
    therefore never wait (the Deepgram and Cartesia handlers queue, set events and write
    only with `send_now`s).

    Why: a message handled in websockets' reader cost ~35 µs of the voice worker's CPU
    (`scripts/bench/provider_read.py`): the tick waking the reader, its select, recv
    through gevent's socket, the connection's locks, websockets' loop; ~1,400 messages a
    second at 200 calls, 17 % of the worker (`scripts/bench/voice.py --perf-calls`).

    Nothing is handled here that websockets should see: whatever follows the first other
    frame (a control frame, a fragment, a partial frame, the end of the stream or a read
    error) is kept and the socket handed back; websockets' loop then reads it through
    `_ReplaySocket`, which the connection's `socket` becomes, and goes on from there as
    ever (it answers pings, closes, fails the connection). The pump reads again once the
    stream is back at a frame boundary. The socket's `close()` ends the pumped reads first
    (the ticker must forget a file number before it can be reused)."""

    __slots__ = ("_delivery", "_mutex", "_protocol", "_read", "_splitter", "_unread", "fileno")
    pump: ClassVar[ReadPump | None] = None  # set in the voice process (`pump_reads_with`)
    delivering: ClassVar[bool] = False  # in the pump, handing messages on

    def __init__(
        self,
        connection: Connection,
        delivery: _Delivery,
        splitter: _FrameSplitter,
        read: Callable[[], bytes],
    ) -> None:
        self.fileno: int = connection.socket.fileno()
        self._mutex = connection.protocol_mutex
        self._protocol = connection.protocol
        self._delivery = delivery
        self._splitter = splitter
        self._read = read
        self._unread: bytes | BaseException | None = None  # for websockets' loop

    @classmethod
    def install(
        cls, connection: Connection, delivery: _Delivery, splitter: _FrameSplitter, pump: ReadPump
    ) -> None:
        read = _nonblocking_reader(connection.socket)
        if read is None:
            return
        reads = cls(connection, delivery, splitter, read)
        connection.socket = _ReplaySocket(connection.socket, reads, pump)  # type: ignore[assignment]
        pump.pump_reads(reads)

    def can_pump(self) -> bool:
        protocol = self._protocol
        return (
            self._unread is None
            and protocol.state is State.OPEN
            and protocol.current_size is None
            and not protocol.reader.buffer
            and self._splitter.at_boundary
        )

    def read(self) -> bool:
        """In the pump (see the class docstring); False hands the socket back."""
        delivery = self._delivery
        if not acquire_now(delivery.order):
            return True  # never so here (the reader waits in select), but never wait
        try:
            return self._read_locked(delivery)
        finally:
            delivery.order.release()

    def _read_locked(self, delivery: _Delivery) -> bool:
        if not acquire_now(self._mutex):
            return True  # a sender holds it (waiting for its socket): the next round
        try:
            if not self.can_pump():
                return False
            if (data := self._read_now()) is None:
                return True
            messages, pos = _whole_data_frames(data, self._protocol.max_message_size)
            if pos < len(data):
                self._unread = data[pos:]
        finally:
            self._mutex.release()
        _PumpedReads.delivering = True
        try:
            for message, text in messages:
                delivery.deliver_whole(message, text)
        finally:
            _PumpedReads.delivering = False
        return bool(data) and self._unread is None

    def _read_now(self) -> bytes | None:
        """What has come, None when nothing has; b"" hands the socket back, with what
        websockets' loop must meet kept in `_unread` (the end of the stream, an error)."""
        try:
            data: bytes = self._read()
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        except ssl.SSLWantWriteError:
            return b""  # OpenSSL must write first: gevent's own read waits for that
        except Exception as exc:  # websockets' loop meets it, as it would have
            self._unread = exc
            return b""
        if not data:
            self._unread = b""  # the end of the stream
        return data

    def take_unread(self) -> bytes | None:
        """What the pump left for websockets' loop (None: nothing); raises the read's error."""
        unread, self._unread = self._unread, None
        if isinstance(unread, BaseException):
            raise unread
        return unread


def _whole_data_frames(data: bytes, limit: int | None) -> tuple[list[tuple[bytes, bool]], int]:
    """The whole, unfragmented, unmasked text and binary frames at the start of `data` (their
    payloads, and whether text), and where the first other frame starts."""
    messages: list[tuple[bytes, bool]] = []
    pos, size = 0, len(data)
    while (found := frame_at(data, pos)) is not None:
        start, end, length = found
        first = data[pos]
        if end > size or first not in WHOLE_DATA or data[pos + 1] & MASKED:
            break
        if limit is not None and length > limit:
            break  # websockets refuses it, and closes
        messages.append((data[start:end], first != BINARY))
        pos = end
    return messages, pos


def _nonblocking_reader(sock: Any) -> Callable[[], bytes] | None:
    """A read of `sock` that never waits (BlockingIOError or SSLWantReadError when there is
    nothing; b"" at the end), or None where there is none (as `nonblocking_writer`)."""
    if not type(sock).__module__.startswith("gevent"):
        return None
    if (sslobj := getattr(sock, "_sslobj", None)) is not None:
        return functools.partial(_tls_read, sslobj)
    if (raw := getattr(sock, "_sock", None)) is not None:
        return functools.partial(raw.recv, RECV_BYTES)
    return None


RECV_BYTES = 65536  # websockets' own `recv_bufsize`


def _tls_read(sslobj: Any) -> bytes:
    """The records that have come (OpenSSL hands over one a read); b"" at the end, a
    TCP close without TLS's close_notify included (as `ssl`'s `suppress_ragged_eofs`)."""
    chunks: list[bytes] = []
    for _ in range(_TLS_READS):
        try:
            chunk = sslobj.read(RECV_BYTES)
        except (ssl.SSLWantReadError, BlockingIOError):
            if chunks:
                break
            raise
        except ssl.SSLEOFError:
            chunk = b""
        if not chunk:
            if chunks:
                break  # the end comes with the next read
            return b""
        chunks.append(chunk)
    return b"".join(chunks)


class _ReplaySocket:
    """A connection's socket whose `recv()` first returns what the pump left for websockets'
    loop (`_PumpedReads.take_unread`), and whose `close()` ends the pumped reads first;
    everything else is the socket's own."""

    def __init__(self, sock: Any, reads: _PumpedReads, pump: ReadPump) -> None:
        self._sock, self._reads, self._pump = sock, reads, pump

    def recv(self, size: int, *flags: int) -> bytes:
        unread = self._reads.take_unread()
        return unread if unread is not None else self._sock.recv(size, *flags)

    def close(self) -> None:
        self._pump.end_reads(self._reads)
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _at_frame_boundary(protocol: Protocol) -> bool:
    """Whether `protocol` is open and its parser waits for the first byte of a frame: no
    bytes buffered, and its innermost generator is the reader's `at_eof`, which the parser
    asks before each frame (a frame's header read while its payload has not come shows as
    `Frame.parse` there). websockets has no public way to ask; read, never changed, and any
    other shape leaves the splitter out."""
    if protocol.state is not State.OPEN or protocol.reader.buffer:
        return False
    generator = getattr(protocol, "parser", None)
    while (inner := getattr(generator, "gi_yieldfrom", None)) is not None:
        generator = inner
    return getattr(generator, "gi_code", None) is _AT_EOF
