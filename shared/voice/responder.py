"""One agent turn: LLM tokens → sentences → TTS → paced audio, measured stage by stage.

Runs in its own greenlet; killing that greenlet (barge-in) closes the LLM stream and
cancels the TTS turn through the `finally` blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent

from shared.providers.llm.base import AgentContext, ChatMessage, LlmEvent, LlmEventKind
from shared.realtime import checkpoint, pace_reads
from shared.voice.playout import Playout, TurnAudio
from shared.voice.sentences import SentenceSplitter
from shared.voice.stages import CallProviders

log = logging.getLogger(__name__)

# Once the first sentence is with the TTS, the LLM's socket is read at most this often: the
# tokens that came meanwhile in one read (shared.realtime.pace_reads). A later sentence
# reaches the TTS up to this much later, while the first one's audio (0.4 s and more) plays.
LLM_READ_PACE_S = 0.08


@dataclass
class Reply:
    """What one agent turn said, did and cost."""

    turn: int
    requested_at: float
    speech_ended_at: float | None = None  # the caller's turn it answers (None: the greeting)
    text_parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    first_text_at: float | None = None  # first sentence handed to TTS
    first_audio_at: float | None = None  # first audio back from TTS
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    audio: TurnAudio | None = None
    done: bool = False
    recorded: bool = False

    @property
    def text(self) -> str:
        return "".join(self.text_parts).strip()

    def heard_text(self) -> str:
        """The words the caller heard, from the audio confirmed played by mark echoes."""
        audio = self.audio
        if audio is None or audio.total == 0:
            return ""
        if self.done and audio.heard >= audio.total:
            return self.text
        words = self.text.split()
        # Audio is close to proportional to text over a whole turn; words are cut whole.
        return " ".join(words[: int(len(words) * min(1.0, audio.heard / audio.total))])


def respond(
    providers: CallProviders,
    context: AgentContext,
    history: list[ChatMessage],
    playout: Playout,
    reply: Reply,
    voice: str | None,
    language: str,
) -> None:
    """Produce the reply: stream it to the caller and fill `reply` as it goes."""
    tts = _FallbackTts(providers, voice, language)
    reply.audio = playout.begin_turn(reply.turn)
    pump = gevent.spawn(_pump_audio, tts, playout, reply)
    try:
        _speak(providers, context, history, tts, reply)
        tts.end()
        pump.join()
    finally:
        if not pump.dead:
            tts.cancel()
            pump.kill(block=False)
        playout.finish(reply.audio)
    reply.done = True


def _speak(
    providers: CallProviders,
    context: AgentContext,
    history: list[ChatMessage],
    tts: _FallbackTts,
    reply: Reply,
) -> None:
    splitter = SentenceSplitter()
    try:
        for event in _llm_events(providers, context, history):
            if event.kind is LlmEventKind.TOKEN and event.text:
                if reply.first_token_at is None:
                    reply.first_token_at = time.monotonic()
                reply.text_parts.append(event.text)
                for sentence in splitter.feed(event.text):
                    _push(tts, reply, sentence)
            elif event.kind is LlmEventKind.TOOL_CALL:
                reply.tool, reply.arguments = event.tool, dict(event.arguments)
        rest = splitter.flush()
        if rest.strip():
            _push(tts, reply, rest)
    finally:
        pace_reads(0)


def _push(tts: _FallbackTts, reply: Reply, text: str) -> None:
    if reply.first_text_at is None:
        reply.first_text_at = time.monotonic()
        pace_reads(LLM_READ_PACE_S)
    tts.push(text)


def _llm_events(
    providers: CallProviders, context: AgentContext, history: list[ChatMessage]
) -> Iterator[LlmEvent]:
    """The reply's events; if the real LLM fails before saying anything, the local one answers.

    The greeting (no history yet) always comes from the local agent: it is the agent's own
    configured words (personalised for a returning caller), so a network round trip to an
    LLM would only delay the first thing the caller hears."""
    if not history:
        yield from providers.llm.fallback.stream(context, history)
        return
    stream = providers.llm.current.stream(context, history)
    produced = False
    try:
        for event in stream:
            produced = True
            checkpoint()  # between two chunks, before this one's sentences and TTS
            yield event
    except Exception as exc:
        if produced or not providers.llm.can_fall_back:
            raise
        yield from providers.llm.fall_back(exc).stream(context, history)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


class _FallbackTts:
    """A TTS turn that moves to the local voice if the real one fails, even mid-turn: the
    local voice then says the turn's text so far (a fragment may be heard twice, rather
    than the caller hearing silence) and everything after it."""

    def __init__(self, providers: CallProviders, voice: str | None, language: str) -> None:
        self.stage = providers.tts
        self.voice, self.language = voice, language
        self.pushed: list[str] = []
        self.ended = False
        try:
            self.turn = self.stage.current.start_turn(voice, language)
        except Exception as exc:
            if not self.stage.can_fall_back:
                raise
            self.turn = self.stage.fall_back(exc).start_turn(voice, language)

    def push(self, text: str) -> None:
        self.pushed.append(text)
        self.turn.push(text)

    def end(self) -> None:
        self.ended = True
        self.turn.end()

    def cancel(self) -> None:
        self.turn.cancel()

    def play(self, sink: Callable[[bytes], None]) -> None:
        try:
            self.turn.play(sink)
        except Exception as exc:
            if not self.stage.can_fall_back:
                raise
            self.turn = self.stage.fall_back(exc).start_turn(self.voice, self.language)
            for text in self.pushed:
                self.turn.push(text)
            if self.ended:
                self.turn.end()
            self.turn.play(sink)


def _pump_audio(tts: _FallbackTts, playout: Playout, reply: Reply) -> None:
    """The turn's audio into the playout; for Cartesia `sink` runs in its reader, and this
    greenlet only waits for the end (or the fallback's audio)."""
    audio = reply.audio
    assert audio is not None

    def sink(chunk: bytes) -> None:
        if reply.first_audio_at is None:
            reply.first_audio_at = time.monotonic()
        playout.add(audio, chunk)

    tts.play(sink)
