"""The STT interface the voice loop uses. Audio in: 8 kHz μ-law bytes (Telnyx PCMU).

Threading rule (the voice process runs on gevent): `on_event` is always called from a
greenlet of the process's hub, never from a raw OS thread; CPU-heavy work (Whisper) runs
in the hub's threadpool and its result is handed back to a greenlet before the callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class SttEventKind(StrEnum):
    SPEECH_STARTED = "speech_started"  # voice activity began (VAD or the provider's own)
    INTERIM = "interim"  # a partial transcript that may still change
    FINAL = "final"  # final text for a segment (more may follow in the same turn)
    END_OF_TURN = "end_of_turn"  # endpointing: the caller finished speaking


@dataclass(frozen=True)
class SttEvent:
    kind: SttEventKind
    text: str = ""
    # time.monotonic() when the provider produced/delivered the event
    at: float = 0.0
    # for END_OF_TURN/FINAL: time.monotonic() estimate of when the caller stopped speaking
    speech_ended_at: float | None = None


class SttStream(Protocol):
    def send(self, pcmu: bytes) -> None:
        """Feed caller audio (any length, in order). Never blocks on the network."""

    def close(self) -> None:
        """Flush, end the stream and release resources. Idempotent."""


class SttProvider(Protocol):
    name: str

    def open(
        self,
        language: str,
        on_event: Callable[[SttEvent], None],
        *,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> SttStream:
        """Start one streaming session (one per call). `on_error` hears of a stream that
        broke mid-call (the loop then falls back to the local provider)."""
