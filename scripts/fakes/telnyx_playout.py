"""Telnyx's side of agent audio playout, as a pure model (no I/O, times are passed in).

Audio arriving on a bidirectional media stream plays at 8000 μ-law bytes per second on a
jitter-free clock: at once if nothing is playing, otherwise queued behind what is. A `mark`
is due when the audio queued before it has finished; `clear` drops the unplayed audio and
returns the pending marks. What played is kept as a timeline of pieces, each with the
monotonic time its playback started, so callers can measure latency, underruns and clears.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BYTES_PER_SECOND = 8000  # PCMU 8 kHz mono: one byte per sample


@dataclass(frozen=True)
class Gap:
    """Playout ran dry at `at` and new audio arrived `length` seconds later.

    `marks` are the marks received between the two pieces and `cleared` tells whether a
    `clear` came in between: either usually means a turn ended rather than an underrun.
    """

    at: float
    length: float
    marks: tuple[str, ...]
    cleared: bool


class Playout:
    """The audio queue of one call, with its heard timeline, gaps and pending marks."""

    def __init__(self) -> None:
        self.pieces: list[tuple[float, bytes]] = []  # (playback start, audio), in order
        self.end = 0.0  # when the queued audio finishes playing
        self.ended_at: float | None = None  # the call ended: nothing plays after this
        self.gaps: list[Gap] = []
        self._marks: deque[tuple[float, str]] = deque()  # pending (due, name)
        self._marks_since_audio: list[str] = []
        self._cleared_since_audio = False

    def add_audio(self, now: float, audio: bytes) -> None:
        """Queue `audio` that arrived at `now`."""
        if not audio or self.ended_at is not None:
            return
        if self.pieces and now > self.end:
            marks = tuple(self._marks_since_audio)
            self.gaps.append(Gap(self.end, now - self.end, marks, self._cleared_since_audio))
        start = max(now, self.end)
        self.pieces.append((start, audio))
        self.end = start + len(audio) / BYTES_PER_SECOND
        self._marks_since_audio = []
        self._cleared_since_audio = False

    def add_mark(self, now: float, name: str) -> float:
        """Register a mark that arrived at `now`; returns when it is due (`now` if at once)."""
        self._marks_since_audio.append(name)
        if self.end <= now:
            return now
        self._marks.append((self.end, name))
        return self.end

    def next_mark_due(self) -> float | None:
        """When the earliest pending mark is due, or None."""
        return self._marks[0][0] if self._marks else None

    def pop_due_marks(self, now: float) -> list[str]:
        """The names of the pending marks due by `now`, in order, removed from the queue."""
        due: list[str] = []
        while self._marks and self._marks[0][0] <= now:
            due.append(self._marks.popleft()[1])
        return due

    def clear(self, now: float) -> tuple[int, list[str]]:
        """Drop what has not played by `now`; returns (bytes dropped, pending mark names)."""
        dropped = self._cut(now)
        marks = [name for _, name in self._marks]
        self._marks.clear()
        self._cleared_since_audio = True
        return dropped, marks

    def finish(self, now: float) -> None:
        """The call ended at `now`: unplayed audio is never heard, pending marks never due."""
        if self.ended_at is None:
            self._cut(now)
            self._marks.clear()
            self.ended_at = now

    def played(self, now: float) -> list[tuple[float, bytes]]:
        """The pieces as heard by `now`: (playback start, audio) with the last one clipped."""
        if self.ended_at is not None:
            now = min(now, self.ended_at)
        out: list[tuple[float, bytes]] = []
        for start, audio in self.pieces:
            if start >= now:
                break
            out.append((start, audio[: _bytes_in(now - start)]))
        return out

    def first_audio_after(self, t: float, now: float) -> float | None:
        """The earliest instant >= `t` at which agent audio was playing (None if none yet)."""
        for start, audio in self.played(now):
            if start + len(audio) / BYTES_PER_SECOND > t:
                return max(start, t)
        return None

    def underruns(
        self, min_gap: float = 0.0, is_turn_end: Callable[[str], bool] = lambda _name: True
    ) -> list[Gap]:
        """Gaps inside an utterance: no clear and no turn-ending mark between the pieces."""
        return [
            gap
            for gap in self.gaps
            if gap.length > min_gap
            and not gap.cleared
            and not any(is_turn_end(name) for name in gap.marks)
        ]

    def _cut(self, now: float) -> int:
        """Remove the audio that would play after `now`; returns how many bytes went."""
        dropped = 0
        while self.pieces and self.pieces[-1][0] >= now:
            dropped += len(self.pieces.pop()[1])
        if self.pieces:
            start, audio = self.pieces[-1]
            keep = _bytes_in(now - start)
            if keep < len(audio):
                dropped += len(audio) - keep
                self.pieces[-1] = (start, audio[:keep])
        self.end = min(self.end, now)
        return dropped


def _bytes_in(seconds: float) -> int:
    """How many bytes play in `seconds` (rounded to the nearest sample)."""
    return max(0, round(seconds * BYTES_PER_SECOND))
