"""The real-time loop of one call: caller audio → STT → turn-taking → reply → audio out.

Greenlets per call: the websocket reader (it, or the read ticker's pump shared by all
calls, calls `feed`, which therefore never waits), the STT stream's own, `_brain`
(turn-taking), one responder per agent turn, the turn writer, and the playout's pacing
loop where the process has no `Pacer` to step it.
Barge-in: caller speech while the agent is audible kills the responder (closing the LLM
stream and cancelling TTS), sends `clear`, and records what was actually heard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import gevent
from gevent.queue import Queue

from shared.observability.metrics import (
    VOICE_BARGE_INS,
    VOICE_LLM_TTFT,
    VOICE_LOOP_OVERHEAD,
    VOICE_STT_LATENCY,
    VOICE_TO_VOICE,
    VOICE_TTS_TTFA,
)
from shared.providers.llm.base import AgentContext, ChatMessage
from shared.providers.stt.base import SttEvent, SttEventKind, SttStream
from shared.voice import telnyx_media as tm
from shared.voice.playout import Pacer, Playout
from shared.voice.recorder import TurnRecord, TurnSink
from shared.voice.responder import Reply, respond
from shared.voice.stages import CallProviders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallSetup:
    """What the loop needs to know about the call, loaded from the database once."""

    context: AgentContext
    voice: str | None
    language: str


@dataclass(frozen=True)
class LoopConfig:
    chunk_ms: int = 100
    lead_ms: int = 200


@dataclass
class CallerTurn:
    parts: list[str] = field(default_factory=list)
    started_at: float | None = None
    speech_ended_at: float | None = None

    @property
    def text(self) -> str:
        return " ".join(p.strip() for p in self.parts if p.strip())


class CallLoop:
    def __init__(
        self,
        *,
        send: tm.Sender,
        providers: CallProviders,
        setup: CallSetup,
        sink: TurnSink,
        on_end_call: Callable[[], None],
        on_transfer: Callable[[str], None],
        config: LoopConfig | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        config = config or LoopConfig()
        self.providers = providers
        self.setup = setup
        self.sink = sink
        self.on_end_call = on_end_call
        self.on_transfer = on_transfer
        self.playout = Playout(send, chunk_ms=config.chunk_ms, lead_ms=config.lead_ms, pacer=pacer)
        self.events: Queue[SttEvent | None] = Queue()
        self.reorder = tm.Reorderer()
        self.history: list[ChatMessage] = []
        self.caller = CallerTurn()
        self.reply: Reply | None = None
        self.responder: gevent.Greenlet | None = None
        self.seq = 0
        self.turn_no = 0
        self.wall_offset = time.time() - time.monotonic()
        self.greenlets: list[gevent.Greenlet] = []
        self.stt: SttStream | None = None
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.stt = self._open_stt(self.setup.language)
        self.greenlets = [gevent.spawn(self._brain)]
        if self.playout.needs_greenlet:
            self.greenlets.append(gevent.spawn(self.playout.run))
        # The local agent embeds the agent's knowledge while the greeting plays, not when
        # the first question is waiting for its answer (~200 ms on this CPU).
        prepare = getattr(self.providers.llm.current, "prepare", None)
        if prepare is not None:
            self.greenlets.append(gevent.spawn(prepare, self.setup.context))

    def close(self) -> None:
        """End of call (stop, socket closed, or hang-up): store what is pending."""
        if self.closed:
            return
        self.closed = True
        if self.responder is not None:
            self.responder.kill(block=True, timeout=2)
        if self.reply is not None:
            self._record_reply(self.reply, interrupted=not self._fully_heard(self.reply))
        if self.caller.text:
            self._record_caller(self.caller, stt_ms=None)
        self.events.put(None)
        self.playout.close()
        if self.stt is not None:
            self.stt.close()
        gevent.killall(self.greenlets, block=True, timeout=2)
        self.providers.close()
        self.sink.close(timeout=5)
        # Nothing of the call runs past here: drop what points back at the loop (the STT
        # stream holds its handlers; a killed greenlet's GreenletExit holds the frames it
        # stopped in), so the call's objects are freed by reference counting now rather
        # than by the next full collection (web/voice/gc_policy.py).
        self.stt, self.responder, self.greenlets = None, None, []

    # -- inbound frames (from the read ticker's pump or the reader: must never wait) ---
    def feed(self, frame: tm.Frame) -> None:
        if isinstance(frame, tm.Media):
            if frame.track != "inbound":
                return
            for payload in self.reorder.push(frame.sequence, frame.payload):
                self._stt_send(payload)
        elif isinstance(frame, tm.Mark):
            self.playout.on_mark(frame.name)
        elif isinstance(frame, tm.Dtmf):
            log.info("caller pressed %s", frame.digit)
        elif isinstance(frame, tm.Error):
            log.warning("media stream error frame: %s", frame.detail)

    # -- STT ---------------------------------------------------------------------------
    def _open_stt(self, language: str) -> SttStream:
        stage = self.providers.stt
        try:
            return stage.current.open(language, self.events.put, on_error=self._stt_failed)
        except Exception as exc:
            if not stage.can_fall_back:
                raise
            return stage.fall_back(exc).open(language, self.events.put, on_error=self._stt_failed)

    def _stt_failed(self, exc: BaseException) -> None:
        if self.closed or not self.providers.stt.can_fall_back:
            log.error("STT failed: %r", exc)
            return
        self.providers.stt.fall_back(exc)
        self.stt = self._open_stt(self.setup.language)

    def _stt_send(self, payload: bytes) -> None:
        if self.stt is not None:
            self.stt.send(payload)

    # -- turn-taking ---------------------------------------------------------------------
    def _brain(self) -> None:
        setup = self.setup
        self._start_reply(setup, speech_ended_at=None)  # the greeting
        for event in self.events:
            if event is None:
                return
            self._on_stt(setup, event)

    def _on_stt(self, setup: CallSetup, event: SttEvent) -> None:
        if event.kind is SttEventKind.SPEECH_STARTED or (
            event.kind is SttEventKind.INTERIM and event.text.strip()
        ):
            if self.caller.started_at is None:
                self.caller.started_at = event.at
            self._barge_in()
        elif event.kind is SttEventKind.FINAL:
            if event.text.strip():
                self._barge_in()
                self.caller.parts.append(event.text)
                self.caller.started_at = self.caller.started_at or event.at
            self.caller.speech_ended_at = event.speech_ended_at or self.caller.speech_ended_at
        elif event.kind is SttEventKind.END_OF_TURN:
            if event.text.strip() and not self.caller.text:
                self.caller.parts.append(event.text)
            if not self.caller.text:
                self.caller = CallerTurn()
                return
            ended = event.speech_ended_at or self.caller.speech_ended_at or event.at
            stt_ms = max(0.0, (event.at - ended) * 1000)
            VOICE_STT_LATENCY.observe(stt_ms / 1000)
            turn, self.caller = self.caller, CallerTurn()
            turn.speech_ended_at = ended
            self._record_caller(turn, stt_ms=stt_ms)
            self.history.append(ChatMessage("user", turn.text))
            self._start_reply(setup, speech_ended_at=ended)

    def _barge_in(self) -> None:
        reply = self.reply
        if reply is None or (reply.done and not self.playout.speaking):
            return
        if self.responder is not None:
            self.responder.kill(block=False)
        self.playout.clear()
        VOICE_BARGE_INS.inc()
        log.info("barge-in: agent cut off", extra={"turn": reply.turn})
        self._record_reply(reply, interrupted=True)
        self.reply = None

    # -- agent turns -------------------------------------------------------------------
    def _start_reply(self, setup: CallSetup, speech_ended_at: float | None) -> None:
        if self.responder is not None and not self.responder.dead:
            self.responder.kill(block=False)
        self.turn_no += 1
        reply = Reply(self.turn_no, time.monotonic(), speech_ended_at)
        self.reply = reply
        history = list(self.history)
        self.responder = gevent.spawn(self._run_reply, setup, reply, history)

    def _run_reply(
        self,
        setup: CallSetup,
        reply: Reply,
        history: list[ChatMessage],
    ) -> None:
        respond(
            self.providers, setup.context, history, self.playout, reply, setup.voice, setup.language
        )
        assert reply.audio is not None
        self.playout.wait_heard(reply.audio)  # a barge-in clears it, which ends the wait
        if self.reply is not reply:
            return
        # A send that fails closes the playout, which ends the wait too, and that can come
        # before the reader sees the socket's end: then the caller heard only what was
        # marked, and the turn was cut off.
        cut_off = self.playout.closed and not self._fully_heard(reply)
        self._record_reply(reply, interrupted=cut_off)
        self.reply = None
        if cut_off:
            return
        if reply.tool == "end_call":
            self.on_end_call()
        elif reply.tool == "transfer_call" and reply.arguments.get("to"):
            self.on_transfer(str(reply.arguments["to"]))

    def _observe(self, reply: Reply) -> dict[str, float]:
        """The turn's latency figures, observed in the histograms (once, when recorded: a
        turn's first chunk can leave after its TTS has finished, if its send was refused
        and tried again)."""
        if reply.first_token_at is not None:
            VOICE_LLM_TTFT.observe(reply.first_token_at - reply.requested_at)
        if reply.first_audio_at is not None and reply.first_text_at is not None:
            VOICE_TTS_TTFA.observe(reply.first_audio_at - reply.first_text_at)
        latency = self._latency(reply, reply.speech_ended_at)
        if latency.get("voice_to_voice_ms") is not None:
            VOICE_TO_VOICE.observe(latency["voice_to_voice_ms"] / 1000)
            VOICE_LOOP_OVERHEAD.observe(max(0.0, latency["overhead_ms"]) / 1000)
        return latency

    @staticmethod
    def _latency(reply: Reply, speech_ended_at: float | None) -> dict[str, float]:
        ms: dict[str, float] = {}
        if reply.first_token_at is not None:
            ms["llm_ttft_ms"] = (reply.first_token_at - reply.requested_at) * 1000
        if reply.first_audio_at is not None and reply.first_text_at is not None:
            ms["tts_ttfa_ms"] = (reply.first_audio_at - reply.first_text_at) * 1000
        first_sent = reply.audio.first_sent_at if reply.audio else None
        if (
            speech_ended_at is not None
            and first_sent is not None
            and reply.first_text_at is not None
        ):
            ms["voice_to_voice_ms"] = (first_sent - speech_ended_at) * 1000
            # Provider time: STT up to the request, LLM up to its first sentence, TTS up
            # to first audio. What remains is the loop's own cost.
            providers_s = (
                (reply.requested_at - speech_ended_at)
                + (reply.first_text_at - reply.requested_at)
                + ms.get("tts_ttfa_ms", 0) / 1000
            )
            ms["overhead_ms"] = ms["voice_to_voice_ms"] - providers_s * 1000
        return ms

    def _fully_heard(self, reply: Reply) -> bool:
        return reply.done and reply.audio is not None and reply.audio.heard >= reply.audio.total

    # -- records -----------------------------------------------------------------------
    def _wall(self, monotonic: float | None) -> datetime:
        return datetime.fromtimestamp((monotonic or time.monotonic()) + self.wall_offset, UTC)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    def _record_caller(self, turn: CallerTurn, stt_ms: float | None) -> None:
        seq = self._next_seq()
        started, ended = self._wall(turn.started_at), self._wall(turn.speech_ended_at)
        gevent.spawn(self._store_caller, seq, turn.text, started, ended, stt_ms)

    def _store_caller(
        self, seq: int, text: str, started: datetime, ended: datetime, stt_ms: float | None
    ) -> None:
        try:
            sentiment: float | None = self.providers.sentiment.current.score(text)
        except Exception as exc:
            sentiment = (
                self.providers.sentiment.fall_back(exc).score(text)
                if self.providers.sentiment.can_fall_back
                else None
            )
        self.sink.record(
            TurnRecord(
                seq=seq,
                speaker="caller",
                text=text,
                started_at=started,
                ended_at=ended,
                sentiment=sentiment,
                stt_ms=stt_ms,
            )
        )

    def _record_reply(self, reply: Reply, *, interrupted: bool) -> None:
        if reply.recorded:
            return
        reply.recorded = True
        latency = self._observe(reply)
        text = reply.heard_text() if interrupted else reply.text
        if not reply.text and reply.audio is None:
            return
        self.history.append(ChatMessage("assistant", text or reply.text))
        first_sent = reply.audio.first_sent_at if reply.audio else None
        self.sink.record(
            TurnRecord(
                seq=self._next_seq(),
                speaker="agent",
                text=text,
                started_at=self._wall(first_sent or reply.requested_at),
                ended_at=self._wall(None),
                interrupted=interrupted,
                llm_ttft_ms=latency.get("llm_ttft_ms"),
                tts_ttfa_ms=latency.get("tts_ttfa_ms"),
                voice_to_voice_ms=latency.get("voice_to_voice_ms"),
            )
        )
