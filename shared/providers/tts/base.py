"""The TTS interface the voice loop uses. Audio out: 8 kHz μ-law bytes (Telnyx PCMU).

One `TtsTurn` per agent turn (for Cartesia: one websocket context). Text arrives in
sentence/clause pieces while the LLM is still streaming; audio is handed on as soon as it
is synthesised. All methods are called from greenlets; blocking work runs in the hub's
threadpool or on gevent-patched sockets.

Audio is pushed to a sink rather than pulled from an iterator: Cartesia's audio arrives in
its connection's reader, and handing each chunk from there to another greenlet that pulls
it cost a greenlet switch and a queue per chunk (~40 µs; docs/voice-benchmark-log.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TtsTurn(Protocol):
    def push(self, text: str) -> None:
        """Add the next piece of the turn's text (in order, spaces kept)."""

    def end(self) -> None:
        """No more text for this turn: `play()` returns after the last piece's audio."""

    def play(self, sink: Callable[[bytes], None]) -> None:
        """Hand μ-law 8 kHz chunks (any size, in order) to `sink` until the turn's audio is
        complete or cancelled, then return; raise if synthesis fails. `sink` may be called
        from another greenlet (Cartesia's reader) while this waits; it must not block."""

    def cancel(self) -> None:
        """Stop synthesis now (barge-in): `play()` returns promptly. Idempotent."""


class TtsProvider(Protocol):
    name: str

    def start_turn(self, voice: str | None, language: str) -> TtsTurn: ...
