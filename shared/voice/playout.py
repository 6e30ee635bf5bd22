"""Agent audio to the caller: re-chunked, paced against real time, with a mark per chunk.

Only a small lead is ever buffered at Telnyx (`lead_ms` plus one chunk), so a `clear`
cuts the agent off at once. Each chunk is followed by a mark; Telnyx echoes a mark when
the audio before it has played, which tells us exactly what the caller heard.

A silence the caller hears inside a turn (the audio sent so far played out before the
next chunk went) is counted in `voice_playout_gaps_total`, by cause: `tts` when no audio
had come for it yet, `playout` when it was waiting here (this process was behind).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
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


class Playout:
    def __init__(
        self,
        send: Sender,
        *,
        chunk_ms: int = 100,
        lead_ms: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
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
        self.wakeup.set()

    def end_segment(self, audio: TurnAudio) -> None:
        if not audio.segment_ends or audio.segment_ends[-1] != audio.total:
            audio.segment_ends.append(audio.total)

    def finish(self, audio: TurnAudio) -> None:
        audio.finished = True
        self.wakeup.set()

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
        cleared, the playout closed, or by our clock nothing is playing any more (a peer
        that echoes no marks). Woken by those events, else when the audio queued so far
        (sent, and not yet sent) should have played: a wake-up or two per turn. (Waiting
        only for the audio sent so far woke this every `lead_ms`, since the pacer keeps
        that much ahead: ~15 times in a 5 s answer, 150 wake-ups a second at 100 calls.)"""
        while audio.heard < audio.total and not audio.cleared and not self.closed and self.speaking:
            audio.changed.clear()
            unsent_s = len(audio.queued) / (BYTES_PER_MS * 1000)
            audio.changed.wait(timeout=max(0.01, self.play_end - self.clock() + unsent_s))

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
            log.debug("media socket closed while sending: %s", exc)
            self.close()

    # -- the pacing loop (one greenlet per call) --------------------------------------
    def run(self) -> None:
        while not self.closed:
            checkpoint()  # between two chunks: the state is whole
            audio = self.turns[0] if self.turns else None
            if audio is None:
                self.idle.set()
                self.wakeup.wait()
                self.wakeup.clear()
                continue
            ahead = self.play_end - self.clock()
            if ahead > self.lead:
                gevent.sleep(ahead - self.lead)
                continue
            if not self._send_next(audio):
                self.wakeup.wait(timeout=0.05)
                self.wakeup.clear()

    def _count_gap(self, audio: TurnAudio, now: float) -> None:
        """Before a chunk of a turn already playing: did the caller hear silence, and why?"""
        if audio.sent and now - self.play_end > GAP_S:
            waited = audio.waiting_since is not None and audio.waiting_since <= self.play_end
            VOICE_PLAYOUT_GAPS.labels("playout" if waited else "tts").inc()

    def _send_next(self, audio: TurnAudio) -> bool:
        """Send one chunk of the head turn; False when it has nothing ready yet."""
        size = min(self.chunk, len(audio.queued))
        # Wait for a full chunk, unless the caller would hear a gap meanwhile.
        if (
            size < self.chunk
            and not audio.finished
            and (size == 0 or self.play_end - self.clock() > 0.02)
        ):
            return False
        if size == 0:  # finished and drained
            self.turns.popleft()
            return True
        piece = bytes(audio.queued[:size])
        del audio.queued[:size]
        if len(piece) % 160:  # Telnyx wants whole 20 ms frames
            piece += SILENCE * (160 - len(piece) % 160)
        now = self.clock()
        self._count_gap(audio, now)
        audio.waiting_since = now if audio.queued else None
        name = f"{audio.turn}:{audio.sent + size}"
        self.send(media_message(piece), mark_message(name))  # one write for both
        if self.closed:
            return True
        audio.sent += size
        if audio.first_sent_at is None:
            audio.first_sent_at = now
        audio.marks[name] = audio.sent
        self.by_name[name] = audio
        self.play_end = max(self.play_end, now) + len(piece) / (BYTES_PER_MS * 1000)
        return True
