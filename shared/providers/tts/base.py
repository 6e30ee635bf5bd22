"""The TTS interface the voice loop uses. Audio out: 8 kHz μ-law bytes (Telnyx PCMU).

One `TtsTurn` per agent turn (for Cartesia: one websocket context). Text arrives in
sentence/clause pieces while the LLM is still streaming; audio is yielded as soon as it
is synthesised. All methods are called from greenlets; blocking work runs in the hub's
threadpool or on gevent-patched sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class TtsTurn(Protocol):
    def push(self, text: str) -> None:
        """Add the next piece of the turn's text (in order, spaces kept)."""

    def end(self) -> None:
        """No more text for this turn: `audio()` finishes after the last piece."""

    def audio(self) -> Iterator[bytes]:
        """μ-law 8 kHz chunks (any size) until the turn's audio is complete or cancelled."""

    def cancel(self) -> None:
        """Stop synthesis now (barge-in): `audio()` ends promptly. Idempotent."""


class TtsProvider(Protocol):
    name: str

    def start_turn(self, voice: str | None, language: str) -> TtsTurn: ...
