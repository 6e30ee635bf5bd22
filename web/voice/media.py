"""GET /media/telnyx (websocket): one Telnyx media stream ↔ one call's real-time loop.

The stream is accepted only with an unexpired token bound to a live call of the right
tenant; anything else is closed with a logged reason. The call's context is loaded once,
before its loop starts (a few ms in this call's greenlet, while Telnyx's first frames wait
in the socket; other calls go on); from then on the loop never waits on the database:
turns are written by a greenlet of their own.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request
from simple_websocket import ConnectionClosed

from shared.db.engine import session_scope
from shared.observability.metrics import (
    VOICE_ACTIVE_CALLS,
    VOICE_BAD_FRAMES,
    VOICE_INBOUND_FRAME_LAG,
    VOICE_REJECTED_STREAMS,
)
from shared.services import call_context, stream_tokens
from shared.voice import telnyx_media as tm
from shared.voice.call_loop import CallLoop, CallSetup
from shared.voice.playout import Pacer
from web.voice.media_socket import MediaSocket
from web.voice.read_ticker import ReadTicker
from web.voice.runtime import VoiceRuntime

log = logging.getLogger(__name__)
POLICY_VIOLATION = 1008
START_TIMEOUT = 10.0
FLOOD_RATE = 60.0  # frames a second: Telnyx sends 50 (20 ms each); 20 % of slack
FLOOD_SLACK = 500  # frames (10 s of audio) that may come in a burst after a stall
MAX_MESSAGE_BYTES = 64 * 1024  # media frames are ~300 bytes; nothing legitimate comes near
PING_S = 25.0
T = TypeVar("T")


def media_stream(ws: Any) -> None:
    runtime: VoiceRuntime = current_app.extensions["voice"]
    sock = MediaSocket(
        ws,
        max_message_bytes=MAX_MESSAGE_BYTES,
        ping_s=PING_S,
        ticker=runtime.read_ticker(),
        delayed_acks=runtime.settings.voice_delayed_acks,
    )
    try:
        _serve(runtime, sock)
    finally:
        sock.close()


def _serve(runtime: VoiceRuntime, ws: MediaSocket) -> None:
    # As Any: compiled (shared/native.py), a call typed as dict.get would use dict's own
    # get and skip MultiDict's, which returns the value rather than the list of them.
    args: Any = request.args
    grant = stream_tokens.redeem(runtime.settings.signing_key, args.get("token", ""))
    if grant is None:
        return _reject(ws, "invalid or expired stream token")
    try:
        with session_scope(runtime.sessions) as session:
            start = call_context.load(session, grant.call_id, grant.organization_id)
    except call_context.CallNotLive as exc:
        return _reject(ws, str(exc))
    stream_start = _await_start(ws)
    if stream_start is None:
        return _reject(ws, "no start frame")
    log.info(
        "media stream started",
        extra={"call_id": str(start.call_id), "stream_id": stream_start.stream_id},
    )
    loop = CallLoop(
        send=_closed_as_stream_closed(ws.send),
        pacer=_pacer(ws, runtime.read_ticker()),
        providers=runtime.call_providers(),
        setup=CallSetup(start.context, start.voice, start.language),
        sink=runtime.turns.for_call(start.call_id),
        on_end_call=lambda: runtime.hang_up(start),
        on_transfer=lambda to: runtime.transfer(start, to),
        config=runtime.loop_config,
    )
    VOICE_ACTIVE_CALLS.inc()
    runtime.calls.start()
    try:
        loop.start()
        _read(ws, loop, str(start.call_id))
    finally:
        loop.close()
        runtime.calls.end()
        VOICE_ACTIVE_CALLS.dec()
        log.info("media stream ended", extra={"call_id": str(start.call_id)})


def _await_start(ws: MediaSocket) -> tm.Start | None:
    """Read up to the `start` frame; anything before it (media included) is dropped."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            raw = ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return None
        if raw is None:
            continue
        try:
            frame = tm.parse(raw)
        except tm.ProtocolError as exc:
            VOICE_BAD_FRAMES.labels("malformed").inc()
            log.warning("dropped frame before start: %s", exc)
            continue
        if isinstance(frame, tm.Start):
            return frame
        if isinstance(frame, tm.Media):
            VOICE_BAD_FRAMES.labels("media_before_start").inc()
            log.warning("dropped media frame received before start")
    return None


class FrameLag:
    """How late the reader gets the caller's frames. Telnyx stamps each with its send time
    (`media.timestamp`, ms since the stream started); arrival minus stamp, less the smallest
    such offset seen on this call, is the frame's lag (0: on its 20 ms schedule). Per frame
    that is a subtraction and two comparisons; the worst lag of each second is observed."""

    WINDOW_MS = 1000

    def __init__(self) -> None:
        self.best = float("inf")  # the smallest arrival - timestamp so far
        self.worst = 0.0  # the largest lag in the current window
        self.window_end: int | None = None  # the timestamp that closes the window

    def frame(self, timestamp_ms: int, arrived: float) -> None:
        offset = arrived - timestamp_ms / 1000
        if offset < self.best:
            self.best = offset
        elif offset - self.best > self.worst:
            self.worst = offset - self.best
        if self.window_end is None:
            self.window_end = timestamp_ms + self.WINDOW_MS
        elif timestamp_ms >= self.window_end:
            VOICE_INBOUND_FRAME_LAG.observe(self.worst)
            self.worst, self.window_end = 0.0, timestamp_ms + self.WINDOW_MS


class FloodGuard:
    """A flood is more frames than real time allows: over `rate` a second since the stream
    started, plus `slack`. Counted from the start, not per second: after a stall (the
    network, or this process) the backlog arrives in one burst, which is not a flood as
    long as the total stays in line with the time elapsed."""

    def __init__(self, started: float, rate: float = FLOOD_RATE, slack: int = FLOOD_SLACK):
        self.started, self.rate, self.slack = started, rate, slack
        self.frames = 0

    def flooding(self, now: float) -> bool:
        self.frames += 1
        return self.frames > self.slack + self.rate * (now - self.started)


class StreamEnd(enum.Enum):
    STOP = "stop"  # Telnyx's stop frame
    FLOOD = "flood"


class InboundFrames:
    """One call's inbound messages, each parsed and handed to its loop as it comes. Never
    waits, so it can run in the read ticker's pump (see `_read`)."""

    def __init__(self, loop: CallLoop, call_id: str) -> None:
        self.loop = loop
        self.call_id = call_id
        self.flood = FloodGuard(time.monotonic())
        self.lag = FrameLag()

    def __call__(self, raw: bytes) -> StreamEnd | None:
        """Handle one message; what ends the stream, if it does."""
        arrived = time.monotonic()
        if self.flood.flooding(arrived):
            return StreamEnd.FLOOD
        try:
            frame = tm.parse(raw)
        except tm.ProtocolError as exc:
            VOICE_BAD_FRAMES.labels("malformed").inc()
            log.warning("dropped frame: %s", exc, extra={"call_id": self.call_id})
            return None
        if isinstance(frame, tm.Stop):
            return StreamEnd.STOP
        if isinstance(frame, tm.Media) and frame.timestamp is not None:
            self.lag.frame(frame.timestamp, arrived)
        if frame is not None:
            self.loop.feed(frame)
        return None


def _read(ws: MediaSocket, loop: CallLoop, call_id: str) -> None:
    """Until the stream ends. Its data frames are read by the read ticker's pump while
    they come as expected; this greenlet reads the rest (control frames, the end)."""
    handle = InboundFrames(loop, call_id)
    while True:
        end = ws.pump(handle)
        if end is None:
            try:
                raw = ws.receive()
            except ConnectionClosed:
                log.info("media socket closed", extra={"call_id": call_id})
                return
            if raw is None:
                continue
            end = handle(raw)
        if end is StreamEnd.FLOOD:
            VOICE_BAD_FRAMES.labels("flood").inc()
            log.warning("media stream flooding: closing it", extra={"call_id": call_id})
            ws.close(POLICY_VIOLATION, "too many frames")
            return
        if end is StreamEnd.STOP:
            return


def _closed_as_stream_closed(send: Callable[..., T]) -> Callable[..., T]:
    """`send` (MediaSocket's), with a closed socket reported as the loop's StreamClosed."""

    def sending(*messages: str) -> T:
        try:
            return send(*messages)
        except (ConnectionClosed, OSError) as exc:  # OSError: BrokenPipe, reset
            raise tm.StreamClosed(type(exc).__name__) from exc

    return sending


def _pacer(ws: MediaSocket, ticker: ReadTicker | None) -> Pacer | None:
    """The call's playout stepped by the read ticker's rounds, where there is a ticker."""
    if ticker is None or not ws.can_send_now:
        return None
    return Pacer(at=ticker.at, send_now=_closed_as_stream_closed(ws.send_now))


def _reject(ws: MediaSocket, reason: str) -> None:
    VOICE_REJECTED_STREAMS.labels(reason.split(":", maxsplit=1)[0][:40]).inc()
    log.warning("media stream rejected: %s", reason, extra={"remote_addr": request.remote_addr})
    ws.close(POLICY_VIOLATION, reason[:120])
