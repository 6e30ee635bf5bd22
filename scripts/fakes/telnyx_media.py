"""The phone side of a Telnyx bidirectional media stream: what Telnyx does on a real call.

`FakeTelnyxCall` connects to the voice process's `/media/telnyx?token=...` like Telnyx,
streams the caller's μ-law audio in 20 ms `media` frames paced on a monotonic clock (with
an optional always-open line of silence between utterances), and plays the agent's audio
on a simulated jitter-free playout clock: `mark`s are echoed when the audio queued before
them has played, `clear` drops the unplayed audio and returns the pending marks. What the
caller heard is kept with its timing, for latency, underrun and barge-in measurements.

The websocket is `websockets`' sans-I/O protocol on one selector loop thread shared by all
calls (`shared_loop()`), rather than its sync client with threads per call: see
`telnyx_media_loop` for the measured cost. Hundreds of calls run on that one thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from scripts.fakes.telnyx_audio import (
    FRAME_BYTES,
    SILENCE,
    frames_of,
    pcmu_from_wav,
    silence_ulaw,
    write_ulaw_wav,
)
from scripts.fakes.telnyx_media_loop import MediaLoop, shared_loop
from scripts.fakes.telnyx_playout import Gap, Playout
from scripts.fakes.telnyx_stream import CallClosed, Event, TelnyxStream, dumps
from scripts.fakes.telnyx_ws import Message

__all__ = [
    "CallClosed",
    "Event",
    "FakeTelnyxCall",
    "Gap",
    "MediaLoop",
    "pcmu_from_wav",
    "shared_loop",
    "silence_ulaw",
]

SILENCE_B64 = base64.b64encode(SILENCE * FRAME_BYTES).decode()
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(eq=False)
class _Utterance:
    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    lateness: float = 0.0
    aborted: bool = False


class FakeTelnyxCall(TelnyxStream):
    """One phone call as Telnyx streams it: `FakeTelnyxCall(url, call_control_id=...)`,
    then `connect()` (or `with`), `start_line()`, `send_audio(...)`, `stop()`.

    No threads of its own: the socket, mark timers and 20 ms ticks run on `loop` (the
    process-wide `shared_loop()` unless one is given). Public methods may be called from
    any thread except that loop's.
    """

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
        super().__init__(
            url,
            call_control_id=call_control_id,
            from_=from_,
            to=to,
            stream_id=stream_id,
            extra_headers=extra_headers,
            loop=loop,
        )
        self.chunk_sizes: list[int] = []  # bytes of μ-law in each agent media message
        self.max_lateness = 0.0  # worst delay of a caller frame behind its 20 ms slot (s)
        self._playout = Playout()
        self._speech: deque[tuple[str, _Utterance]] = deque()
        self._line = False

    def __enter__(self) -> FakeTelnyxCall:
        if self._pipe is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- caller → server -----------------------------------------------------------------

    def send_audio(self, ulaw: bytes, *, realtime: bool = True) -> float:
        """Send caller audio in 20 ms frames (the last padded with μ-law silence).

        Real time: frame k goes at t0 + k*20 ms on the loop's tick, in the line's place if
        it is open; this blocks until the last frame is out and returns the worst lateness
        in seconds. Otherwise all frames go at once (timestamps still 20 ms apart).
        """
        payloads = [base64.b64encode(frame).decode() for frame in frames_of(ulaw)]
        if not realtime:
            with self._lock:
                now = time.monotonic()
                for payload in payloads:
                    self._send_media(payload, now)
            return 0.0
        if not payloads:
            return 0.0
        utterance = _Utterance(len(payloads))
        with self._lock:
            self._check_open()
            self._speech.extend((payload, utterance) for payload in payloads)
        self._tick_me()
        utterance.done.wait()
        if utterance.aborted:
            raise CallClosed("the call ended before all the audio was sent")
        return utterance.lateness

    def send_silence(self, seconds: float) -> float:
        """Send `seconds` of caller silence in real time (see `send_audio`)."""
        return self.send_audio(silence_ulaw(seconds))

    def start_line(self) -> None:
        """Keep silence flowing every 20 ms like an open phone line; speech interjects."""
        with self._lock:
            self._check_open()
            self._line = True
        self._tick_me()

    def stop_line(self) -> None:
        """Stop the background silence (queued speech still goes out)."""
        with self._lock:
            self._line = False

    def send_dtmf(self, digit: str) -> None:
        """Send a keypress the way Telnyx reports it on the stream."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        message = {"event": "dtmf", "stream_id": self.stream_id, "dtmf": {"digit": digit}}
        with self._lock:
            self._write(dumps(message), "dtmf", digit)

    def send_raw(self, data: str | bytes) -> None:
        """Send `data` verbatim (a text frame for str, binary for bytes): bad-input tests."""
        with self._lock:
            self._write(data, "raw", data[:200])

    # -- what the caller heard -----------------------------------------------------------

    @property
    def heard(self) -> bytes:
        """The agent's μ-law audio that has played at the caller's ear so far."""
        return b"".join(audio for _, audio in self.heard_timeline())

    def heard_timeline(self) -> list[tuple[float, bytes]]:
        """What has played so far: (monotonic playback start, μ-law audio) per piece."""
        with self._lock:
            return self._playout.played(time.monotonic())

    @property
    def playout_end(self) -> float:
        """When the agent audio queued so far will have finished playing (monotonic)."""
        with self._lock:
            return self._playout.end

    def first_audio_after(self, t: float) -> float | None:
        """The earliest instant >= `t` at which agent audio was playing, or None."""
        with self._lock:
            return self._playout.first_audio_after(t, time.monotonic())

    @property
    def gaps(self) -> list[Gap]:
        """Every time playout ran dry and audio came again later (turn ends included)."""
        with self._lock:
            return list(self._playout.gaps)

    def underruns(
        self, min_gap: float = 0.0, is_turn_end: Callable[[str], bool] = lambda _name: True
    ) -> list[Gap]:
        """Playout starved inside an utterance: gaps with no clear and no turn-ending mark
        (by default any mark ends a turn) between the audio on either side."""
        with self._lock:
            return self._playout.underruns(min_gap, is_turn_end)

    def clear_latency(self, since: float) -> float | None:
        """Seconds from `since` to the first `clear` received at or after it, or None."""
        hit = self.wait_for("clear", since=since, timeout=0)
        return None if hit is None else hit[0] - since

    def write_wav(self, path: str | Path, *, with_gaps: bool = False) -> None:
        """Write what the caller heard as 8 kHz 16-bit mono WAV; `with_gaps` keeps the
        silences between pieces so the file has the call's real timing."""
        write_ulaw_wav(path, self.heard_timeline(), with_gaps=with_gaps)

    # -- loop callbacks --------------------------------------------------------------------

    def on_tick(self, due: float, now: float) -> bool:
        """Send the caller frame scheduled at `due` (speech, else line silence)."""
        with self._lock:
            if not self._open:
                return False
            if self._speech:
                payload, utterance = self._speech.popleft()
            elif self._line:
                payload, utterance = SILENCE_B64, None
            else:
                return False
            self.max_lateness = max(self.max_lateness, now - due)
            if utterance is not None:
                utterance.lateness = max(utterance.lateness, now - due)
                utterance.remaining -= 1
            with contextlib.suppress(CallClosed):  # the call ended: _release closes it
                self._send_media(payload, due)
            if utterance is not None and not utterance.remaining:
                utterance.done.set()
            going = self._open
        if not going:
            self._release()
        return going

    def _fire_marks(self, now: float) -> None:
        with self._lock, contextlib.suppress(CallClosed):  # the call ended: released below
            if self._open:
                self._echo(self._playout.pop_due_marks(now))
        self._release()

    # -- server → caller (the lock is held) ----------------------------------------------

    def _on_messages(self, messages: list[Message], now: float) -> None:
        for binary, data in messages:
            if binary:
                self._record(now, "binary", len(data))
            else:
                self._on_text(data, now)

    def _on_text(self, data: bytes, now: float) -> None:
        try:
            message = orjson.loads(data)
            event = message["event"]
            if event == "media":
                self._on_media(message["media"]["payload"], now)
            elif event == "mark":
                self._on_mark(message["mark"]["name"], now)
            elif event == "clear":
                dropped, pending = self._playout.clear(now)
                self._record(now, "clear", dropped)
                self._echo(pending)
            else:
                self._record(now, "message", message)
        except (ValueError, TypeError, KeyError, binascii.Error):
            self._record(now, "bad_message", data[:200].decode(errors="replace"))

    def _on_media(self, payload: str, now: float) -> None:
        audio = base64.b64decode(payload, validate=True)
        self.chunk_sizes.append(len(audio))
        self._playout.add_audio(now, audio)
        self._record(now, "media", len(audio))

    def _on_mark(self, name: str, now: float) -> None:
        self._record(now, "mark", name)
        due = self._playout.add_mark(now, name)
        if due <= now:
            self._echo([name])
        else:
            assert self._loop is not None
            self._loop.call_at(due, self._fire_marks)

    def _echo(self, names: list[str]) -> None:
        for name in names:
            if self._open:
                message = {"event": "mark", "stream_id": self.stream_id, "mark": {"name": name}}
                self._write(dumps(message), "mark_echo", name)

    def _ending(self, now: float) -> None:
        self._line = False
        self._playout.finish(now)  # nothing queued after a hang-up is ever heard
        for _, utterance in self._speech:
            utterance.aborted = True
            utterance.done.set()
        self._speech.clear()

    def _tick_me(self) -> None:
        assert self._loop is not None
        self._loop.want_ticks(self)
