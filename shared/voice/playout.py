"""Agent audio to the caller: re-chunked, paced against real time, with a mark per chunk.

Only a small lead is ever buffered at Telnyx (`lead_ms` plus one chunk), so a `clear`
cuts the agent off at once. Each chunk is followed by a mark; Telnyx echoes a mark when
the audio before it has played, which tells us exactly what the caller heard.

Two ways to be paced: with a `Pacer` (the voice process's read ticker) each call's playout
is stepped in the ticker's rounds, beside the callers' frames, and sends without waiting;
without one (no ticker: tests, scripts, not Linux), `run()` paces it in a greenlet of its
own. Either way `_step` decides what goes out when.

A silence the caller hears inside a turn (the audio sent so far played out before the
next chunk went) is counted in `voice_playout_gaps_total`, by cause: `tts` when no audio
had come for it yet, `playout` when it was waiting here (this process was behind).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gevent.event import Event

from shared.observability.metrics import VOICE_PLAYOUT_GAPS
from shared.realtime import checkpoint
from shared.voice.telnyx_media import (
    CLEAR_MESSAGE,
    Sender,
    StreamClosed,
    mark_message,
    media_message,
)

log = logging.getLogger(__name__)

BYTES_PER_MS = 8  # 8 kHz μ-law
SILENCE = b"\xff"
GAP_S = 0.04  # a silence inside a turn the caller would hear
PARTIAL_S = 0.02  # send less than a chunk once the audio sent plays out within this
MARK_GRACE_S = 0.5  # how long past our clock's end a turn waits for its last mark's echo
RETRY_S, RETRY_MAX_S = 0.005, 0.08  # a refused send is tried again after these, doubling


@dataclass
class TurnAudio:
    """Bookkeeping of one agent turn's audio: what was queued, sent and heard."""

    turn: int
    queued: bytearray = field(default_factory=bytearray)
    segment_ends: list[int] = field(default_factory=list)  # byte offset where each text piece ends
    total: int = 0  # bytes received from TTS
    sent: int = 0
    heard: int = 0  # bytes confirmed played by mark echoes
    finished: bool = False  # no more audio will come
    cleared: bool = False
    first_sent_at: float | None = None
    waiting_since: float | None = None  # when the unsent audio began to wait (None: none)
    marks: dict[str, int] = field(default_factory=dict)  # mark name → bytes heard once echoed
    changed: Event = field(default_factory=Event)  # set when all heard, cleared, or closed


@dataclass(frozen=True, slots=True)
class Pacer:
    """Steps a playout from the process's real-time rounds (web/voice/read_ticker.py)
    instead of a greenlet per call. Why: a greenlet woken for each chunk cost a timer and
    two switches through the hub, and under load it waited behind everything the hub had
    to run (silences the caller heard while the callers' frames, read first, were fine).

    `at(when, step)`: call `step()` at or after `when` (`time.monotonic()`), where it must
    not wait. `send_now(*messages)`: send them in one write without waiting; False when
    nothing was sent because it would have had to (try again later); raises StreamClosed."""

    at: Callable[[float, Callable[[], None]], None]
    send_now: Callable[..., bool]


class Playout:
    def __init__(
        self,
        send: Sender,
        *,
        chunk_ms: int = 100,
        lead_ms: int = 200,
        clock: Callable[[], float] = time.monotonic,
        pacer: Pacer | None = None,
    ) -> None:
        self._send = send
        self._pacer = pacer
        self._hungry = True  # waiting for audio: `add` and `finish` step it
        self._stepping = 0  # the pacer's live step (older ones ask in vain)
        self._refused = 0  # sends refused in a row (the socket full, its lock held)
        self.chunk = chunk_ms * BYTES_PER_MS
        self.lead = lead_ms / 1000
        self.clock = clock
        self.turns: deque[TurnAudio] = deque()
        self.by_name: dict[str, TurnAudio] = {}
        self.play_end = 0.0  # when everything sent so far will have finished playing
        self.wakeup = Event()
        self.idle = Event()
        self.idle.set()
        self.closed = False

    # -- producer side ---------------------------------------------------------------
    def begin_turn(self, turn: int) -> TurnAudio:
        audio = TurnAudio(turn)
        self.turns.append(audio)
        self.idle.clear()
        return audio

    def add(self, audio: TurnAudio, ulaw: bytes, *, segment_end: bool = False) -> None:
        if audio.cleared:
            return
        if not audio.queued:
            audio.waiting_since = self.clock()
        audio.queued += ulaw
        audio.total += len(ulaw)
        if segment_end:
            audio.segment_ends.append(audio.total)
        self._fed()

    def end_segment(self, audio: TurnAudio) -> None:
        if not audio.segment_ends or audio.segment_ends[-1] != audio.total:
            audio.segment_ends.append(audio.total)

    def finish(self, audio: TurnAudio) -> None:
        audio.finished = True
        self._fed()

    def _fed(self) -> None:
        """New audio, or the end of a turn's: step now if the pacing waits for it. With a
        pacer, right here (a step never waits): a turn's first chunk leaves as its audio
        comes, not at the ticker's next round."""
        if not self._hungry:
            return
        self._hungry = False
        if self._pacer is None:
            self.wakeup.set()
            return
        self._stepping += 1  # the step asked for before (a partial chunk's) is void
        self._paced_step(self._stepping)

    # -- control ---------------------------------------------------------------------
    def clear(self) -> TurnAudio | None:
        """Barge-in: drop everything unsent, tell Telnyx to flush. Returns the turn cut."""
        current = self.turns[0] if self.turns else None
        for audio in self.turns:
            audio.cleared = True
            audio.queued.clear()
            audio.changed.set()
        self.turns.clear()
        self.send(CLEAR_MESSAGE)
        self.play_end = self.clock()
        self.idle.set()
        self._hungry = True  # the next turn's first audio goes at once, not at a lead's end
        return current

    def on_mark(self, name: str) -> None:
        audio = self.by_name.pop(name, None)
        if audio is not None and not audio.cleared:
            audio.heard = max(audio.heard, audio.marks.pop(name, audio.heard))
            if audio.heard >= audio.total and audio.finished:
                audio.changed.set()

    @property
    def speaking(self) -> bool:
        """Agent audio is queued here, or sent and (by our clock) still playing."""
        return bool(self.turns) or self.clock() < self.play_end

    def wait_heard(self, audio: TurnAudio) -> None:
        """Until the caller has heard all of `audio` (its last mark came back), it was
        cleared, the playout closed, or by our clock nothing has been playing for
        `MARK_GRACE_S` (a peer that echoes no marks). Telnyx echoes the last mark when the
        audio has played at its end, which is after our clock's end (the network, its
        jitter buffer): without the grace a reply would end (and an `end_call` hang up)
        while the caller still hears its last words. Woken by those events, else when the
        audio queued so far (sent, and not yet sent) should have played, plus the grace: a
        wake-up or two per turn. (Waiting only for the audio sent so far woke this every
        `lead_ms`, since the pacer keeps that much ahead: ~15 times in a 5 s answer, 150
        wake-ups a second at 100 calls.)"""
        while (
            audio.heard < audio.total
            and not audio.cleared
            and not self.closed
            and (self.turns or self.clock() < self.play_end + MARK_GRACE_S)
        ):
            audio.changed.clear()
            unsent_s = len(audio.queued) / (BYTES_PER_MS * 1000)
            until = self.play_end + MARK_GRACE_S + unsent_s
            audio.changed.wait(timeout=max(0.01, until - self.clock()))

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()
        for audio in self.turns:
            audio.changed.set()

    def send(self, *messages: str) -> None:
        """Send, unless the socket is gone: then stop playing out. A hang-up racing the
        pacing loop is normal, not an error to raise into (and print from) a greenlet."""
        if self.closed:
            return
        try:
            self._send(*messages)
        except StreamClosed as exc:
            self._gone(exc)

    def _gone(self, exc: StreamClosed) -> None:
        log.debug("media socket closed while sending: %s", exc)
        self.close()

    # -- pacing ---------------------------------------------------------------------
    @property
    def needs_greenlet(self) -> bool:
        """No pacer: `run()` must be spawned."""
        return self._pacer is None

    def run(self) -> None:
        """The pacing loop without a pacer, in a greenlet of its own."""
        while not self.closed:
            checkpoint()  # between two steps: the state is whole
            due = self._step()
            if self.closed:
                return
            self.wakeup.wait(None if due is None else max(0.0, due - self.clock()))
            self.wakeup.clear()

    def _ask(self, when: float) -> None:
        """Have the pacer step this at `when` (the step asked for before is void)."""
        assert self._pacer is not None
        self._stepping += 1
        self._pacer.at(when, functools.partial(self._paced_step, self._stepping))

    def _paced_step(self, stepping: int) -> None:
        if stepping != self._stepping or self.closed:
            return
        due = self._step()
        if due is not None and not self.closed:
            self._ask(due)

    def _step(self) -> float | None:
        """Send every chunk that is due now. Returns when to step again (on `clock`), or
        None to wait for audio; `_hungry` says whether new audio should step it sooner."""
        self._hungry = False
        while not self.closed:
            audio = self.turns[0] if self.turns else None
            if audio is None:
                self.idle.set()
                break
            now = self.clock()
            if self.play_end - now > self.lead:
                return self.play_end - self.lead
            sent = self._send_next(audio, now)
            if sent is None:  # not enough audio for a chunk yet
                self._hungry = True
                return self.play_end - PARTIAL_S if audio.queued else None
            if not sent:  # the socket would have made us wait: later, backing off
                self._refused += 1
                return now + min(RETRY_MAX_S, RETRY_S * 2 ** (self._refused - 1))
            self._refused = 0
        self._hungry = True
        return None

    def _count_gap(self, audio: TurnAudio, now: float) -> None:
        """Before a chunk of a turn already playing: did the caller hear silence, and why?"""
        if audio.sent and now - self.play_end > GAP_S:
            waited = audio.waiting_since is not None and audio.waiting_since <= self.play_end
            VOICE_PLAYOUT_GAPS.labels("playout" if waited else "tts").inc()

    def _send_next(self, audio: TurnAudio, now: float) -> bool | None:
        """Send one chunk of the head turn: True when sent (or the turn is done), None when
        it has too little audio yet, False when the pacer's send would have had to wait."""
        size = min(self.chunk, len(audio.queued))
        # Wait for a full chunk, unless the caller would hear a gap meanwhile.
        if (
            size < self.chunk
            and not audio.finished
            and (size == 0 or self.play_end - now > PARTIAL_S)
        ):
            return None
        if size == 0:  # finished and drained
            self.turns.popleft()
            return True
        piece = bytes(audio.queued[:size])
        if len(piece) % 160:  # Telnyx wants whole 20 ms frames
            piece += SILENCE * (160 - len(piece) % 160)
        name = f"{audio.turn}:{audio.sent + size}"
        messages = (media_message(piece), mark_message(name))  # one write for both
        if not self._deliver(messages):
            return False
        if self.closed:
            return True
        del audio.queued[:size]
        self._count_gap(audio, now)
        audio.waiting_since = now if audio.queued else None
        audio.sent += size
        if audio.first_sent_at is None:
            audio.first_sent_at = now
        audio.marks[name] = audio.sent
        self.by_name[name] = audio
        self.play_end = max(self.play_end, now) + len(piece) / (BYTES_PER_MS * 1000)
        return True

    def _deliver(self, messages: tuple[str, ...]) -> bool:
        """Send through the pacer's `send_now` (False: it would have waited), else `send`."""
        if self._pacer is None:
            self.send(*messages)
            return True
        try:
            return self._pacer.send_now(*messages)
        except StreamClosed as exc:
            self._gone(exc)
            return True
