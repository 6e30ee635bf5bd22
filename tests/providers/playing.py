"""Playing a TTS turn in the tests: all of its audio, or in a thread, to cancel it midway."""

from __future__ import annotations

import threading
import time

from shared.providers.tts.base import TtsTurn


def collect(turn: TtsTurn) -> bytes:
    """The turn's whole audio (play() in this thread); raises what play() raises."""
    chunks: list[bytes] = []
    turn.play(chunks.append)
    return b"".join(chunks)


class Player:
    """`turn.play()` in a thread of its own, as the voice loop's pump runs it, recording
    each chunk and when it came (seconds after the start)."""

    def __init__(self, turn: TtsTurn) -> None:
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.error: BaseException | None = None
        self.first = threading.Event()  # set at the first chunk
        self._started = time.perf_counter()
        self._turn = turn
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 10.0) -> bool:
        """True once play() has returned (or raised: see `error`)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _sink(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.times.append(time.perf_counter() - self._started)
        self.first.set()

    def _run(self) -> None:
        try:
            self._turn.play(self._sink)
        except BaseException as exc:
            self.error = exc
