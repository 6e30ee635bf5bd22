"""The Telnyx side of a media-stream websocket: lifecycle and wire format, no audio logic.

Telnyx is the websocket client. `TelnyxStream` opens the connection, sends `connected` and
`start`, frames `media` messages (sequence number, chunk and timestamp are strings), hangs
up with `stop`, or drops the line. The socket is read on a `MediaLoop`; `FakeTelnyxCall`
adds the audio: pacing, playout, marks and clears.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from websockets.exceptions import InvalidState

from scripts.fakes.telnyx_media_loop import MediaLoop, shared_loop
from scripts.fakes.telnyx_ws import Message, WebSocketPipe

Event = tuple[float, str, Any]


def dumps(message: Any) -> str:
    """Compact JSON (orjson: the phones share the load generators' core)."""
    return orjson.dumps(message).decode()


class CallClosed(ConnectionError):
    """The call's websocket is closed (or closing): nothing more can be sent on it."""


class TelnyxStream:
    """One media stream as Telnyx opens it. Public methods may be called from any thread;
    the lock guards everything, and `_changed` is notified on every recorded event."""

    # media.timestamp: the frame's slot on the 20 ms schedule, as Telnyx stamps it; or, when
    # True, when it actually left. A load generator sets it so that its own lateness (its
    # threads behind schedule on a busy machine) is not counted as the server's frame lag.
    stamp_sent = False

    def __init__(
        self,
        url: str,
        *,
        call_control_id: str,
        from_: str = "+14155550999",
        to: str = "+14155550123",
        stream_id: str | None = None,
        extra_headers: dict[str, str] | None = None,
        loop: MediaLoop | None = None,
    ) -> None:
        self.url = url
        self.call_control_id = call_control_id
        self.from_, self.to = from_, to
        self.stream_id = stream_id or str(uuid.uuid4())
        self.user_id = str(uuid.uuid4())
        self.call_session_id = str(uuid.uuid4())
        self.extra_headers = dict(extra_headers or {})
        self.frames_sent = 0
        self._loop = loop
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._events: list[Event] = []
        self._waiters = 0
        self._open = self._finished = False
        self._pipe: WebSocketPipe | None = None
        self._pipe_to_close: WebSocketPipe | None = None
        self._seq = self._chunk = 0
        self._ts, self._t0 = -20, 0.0
        sid = dumps(self.stream_id).replace("%", "%%")
        self._media_tpl = (
            '{"event":"media","sequence_number":"%d","stream_id":' + sid + ',"media":'
            '{"track":"inbound","chunk":"%d","timestamp":"%d","payload":"%s"}}'
        )

    def connect(self) -> TelnyxStream:
        """Open the websocket and send `connected` then `start`, as Telnyx does."""
        if self._pipe is not None or self._finished:
            raise RuntimeError("a call connects once")
        pipe = WebSocketPipe.open(self.url, self.extra_headers)
        if self._loop is None:
            self._loop = shared_loop()
        try:
            with self._lock:
                self._pipe, self._open = pipe, True
                self._write(dumps({"event": "connected", "version": "1.0.0"}), "connected")
                self._t0 = time.monotonic()
                self._seq = 1
                self._write(dumps(self._start_message()), "start", self.stream_id)
                self._on_messages(pipe.early, self._t0)
        except CallClosed:
            self._release()
            raise
        self._loop.attach(pipe.sock, self._on_readable)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Hang up as Telnyx does: send `stop`, close the websocket, wait for the server.
        Does nothing if the call is not connected (any more)."""
        with self._lock:
            if self._open:
                with contextlib.suppress(CallClosed):  # the line died meanwhile: it is over
                    self._send_stop()
                if not self._wait(lambda: self._finished, timeout):
                    self._end(time.monotonic(), "closed", "the server did not close in time")
        self._release()

    def drop(self) -> None:
        """Lose the call: reset the TCP connection with no `stop` and no close frame."""
        with self._lock:
            self._end(time.monotonic(), "drop", None)
        self._release(abort=True)

    def close(self) -> None:
        """Hang up if still connected, then free everything. Always safe to call."""
        try:
            self.stop()
        finally:
            with self._lock:
                self._end(time.monotonic(), "closed", "close()")
            self._release(abort=True)

    @property
    def closed(self) -> bool:
        """True once the websocket is gone (hung up, dropped or closed by the server)."""
        return self._finished

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait until the websocket is gone; False on timeout."""
        with self._lock:
            return self._wait(lambda: self._finished, timeout)

    @property
    def events(self) -> list[Event]:
        """A snapshot of (monotonic time, kind, detail). Sent: connected, start, stop, dtmf,
        raw, mark_echo (name), drop. Received: media (bytes), mark (name), clear (bytes
        dropped), message (other JSON), binary, bad_message. Then closed (why)."""
        with self._lock:
            return list(self._events)

    def wait_for(
        self, kind: str, *, since: float = 0.0, detail: Any = None, timeout: float = 5.0
    ) -> Event | None:
        """The first event of `kind` (and `detail`, if given) at or after `since`, waiting
        up to `timeout` seconds for it; None if there is none by then."""

        def find() -> Event | None:
            for event in self._events:
                if event[1] == kind and event[0] >= since and detail in (None, event[2]):
                    return event
            return None

        with self._lock:
            return self._wait(find, timeout)

    # -- hooks for the audio side (called with the lock held) -----------------------------

    def _on_messages(self, messages: list[Message], now: float) -> None:
        """Handle messages from the server."""
        for binary, data in messages:
            self._record(now, "binary" if binary else "message", data)

    def _ending(self, now: float) -> None:
        """The call is ending at `now` (hang-up, drop or server close)."""

    # -- internals ------------------------------------------------------------------------

    def _start_message(self) -> dict[str, Any]:
        media_format = {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
        start: dict[str, Any] = {
            "user_id": self.user_id,
            "call_control_id": self.call_control_id,
            "call_session_id": self.call_session_id,
            "from": self.from_,
            "to": self.to,
            "tags": [],
            "client_state": None,
            "custom_parameters": {},
            "media_format": media_format,
        }
        body = {"event": "start", "sequence_number": "1", "stream_id": self.stream_id}
        return {**body, "start": start}

    def _send_stop(self) -> None:
        self._ending(time.monotonic())
        self._seq += 1
        stop = {"user_id": self.user_id, "call_control_id": self.call_control_id}
        body = {"event": "stop", "sequence_number": str(self._seq), "stream_id": self.stream_id}
        self._write(dumps({**body, "stop": stop}), "stop", str(self._seq))
        self._guarded(lambda pipe: pipe.send_close(1000))
        self._open = False

    def _send_media(self, payload: str, at: float) -> None:
        """Send one inbound media frame; `at` is its slot on the monotonic clock."""
        self._seq += 1
        self._chunk += 1
        if self.stamp_sent:
            self._ts = max(self._ts, round((time.monotonic() - self._t0) * 1000))
        else:
            self._ts = max(self._ts + 20, round((at - self._t0) * 1000))
        self._write(self._media_tpl % (self._seq, self._chunk, self._ts, payload))
        self.frames_sent += 1

    def _check_open(self) -> None:
        if not self._open:
            raise CallClosed(f"call {self.call_control_id} is not connected")

    def _write(self, data: str | bytes, kind: str | None = None, detail: Any = None) -> None:
        self._check_open()
        if isinstance(data, str):
            self._guarded(lambda pipe: pipe.send_text(data))
        else:
            self._guarded(lambda pipe: pipe.send_binary(data))
        if kind is not None:
            self._record(time.monotonic(), kind, detail)

    def _guarded(self, fn: Callable[[WebSocketPipe], Any]) -> Any:
        """Run a pipe operation; a socket error ends the call and raises CallClosed."""
        assert self._pipe is not None
        try:
            return fn(self._pipe)
        except (OSError, InvalidState) as exc:
            self._end(time.monotonic(), "closed", f"socket error: {exc!r}")
            raise CallClosed(f"call {self.call_control_id}: {exc}") from exc

    def _record(self, now: float, kind: str, detail: Any = None) -> None:
        self._events.append((now, kind, detail))
        if self._waiters:
            self._changed.notify_all()

    def _wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Condition.wait_for, counting waiters so `_record` can skip a needless notify."""
        self._waiters += 1
        try:
            return self._changed.wait_for(predicate, timeout)
        finally:
            self._waiters -= 1

    def _end(self, now: float, kind: str, detail: Any) -> None:
        """Mark the call over (once); `_release` then closes the socket."""
        if self._finished:
            return
        self._open, self._finished = False, True
        self._ending(now)
        self._pipe_to_close = self._pipe
        self._record(now, kind, detail)

    def _release(self, *, abort: bool = False) -> None:
        """Close the socket of a call that has ended (lock NOT held; idempotent)."""
        with self._lock:
            pipe, self._pipe_to_close = self._pipe_to_close, None
        if pipe is None:
            return
        if self._loop is not None:
            self._loop.detach(pipe.sock)
        pipe.close_socket(abort=abort)

    def _on_readable(self) -> None:
        """Loop callback: the socket has data (or EOF)."""
        assert self._pipe is not None
        try:
            data, now = self._pipe.recv_stamped()
        except OSError:
            data, now = b"", time.monotonic()
        with self._lock:
            if not self._finished:
                with contextlib.suppress(CallClosed):  # the call ended; released below
                    self._on_messages(self._guarded(lambda pipe: pipe.feed(data)), now)
                self._open = self._open and self._pipe.writable
                if self._pipe.closed:
                    self._end(now, "closed", self._pipe.close_reason)
        self._release()
