"""The call loop with scripted providers: what a turn records when the socket goes first
under the playout (its send fails) rather than under the reader, that a closed loop is
freed by reference counting, and that a reply's LLM reads are spaced once its first
sentence is with the TTS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent

from shared.providers.llm.base import AgentContext, ChatMessage, LlmEvent, LlmEventKind
from shared.realtime import before_read
from shared.voice import telnyx_media as tm
from shared.voice.call_loop import CallLoop, CallSetup
from shared.voice.recorder import TurnRecord
from shared.voice.responder import LLM_READ_PACE_S
from shared.voice.stages import CallProviders, Stage
from tests.conftest import alive, no_automatic_collections

WORDS = "one two three four five six seven eight nine ten"
AUDIO = b"\x7f" * 8000  # one second: ten 100 ms chunks


class ScriptedLlm:
    name = "scripted"

    def stream(self, context: AgentContext, history: list[ChatMessage]) -> Iterator[LlmEvent]:
        for word in WORDS.split():
            yield LlmEvent(LlmEventKind.TOKEN, word + " ")
        yield LlmEvent(LlmEventKind.DONE)


class ScriptedTurn:
    def push(self, text: str) -> None:
        """The audio is fixed: one second, whatever the text."""

    def end(self) -> None:
        """Nothing is buffered."""

    def play(self, sink: Callable[[bytes], None]) -> None:
        sink(AUDIO)

    def cancel(self) -> None:
        """Nothing is in flight."""


class ScriptedTts:
    name = "scripted"

    def start_turn(self, voice: str | None, language: str) -> ScriptedTurn:
        return ScriptedTurn()


class SilentStt:
    name = "silent"

    def open(self, language: str, on_event: Any, *, on_error: Any = None) -> SilentStt:
        return self

    def send(self, pcmu: bytes) -> None:
        """The caller says nothing here."""

    def close(self) -> None:
        """Nothing to close."""


class ListeningStt(SilentStt):
    """Keeps the loop's handlers, as a real stream does (one per call)."""

    handlers: tuple[Any, Any] = (None, None)

    def open(self, language: str, on_event: Any, *, on_error: Any = None) -> ListeningStt:
        stream = ListeningStt()
        stream.handlers = (on_event, on_error)
        return stream


class NeutralSentiment:
    name = "neutral"

    def score(self, text: str) -> float:
        return 0.0


class Records:
    def __init__(self) -> None:
        self.turns: list[TurnRecord] = []

    def record(self, turn: TurnRecord) -> None:
        self.turns.append(turn)

    def close(self, timeout: float) -> None:
        """Nothing pending: records are kept in memory."""


class DroppingSocket:
    """Telnyx plays the first chunk (its mark comes back), then the connection is gone."""

    def __init__(self) -> None:
        self.loop: CallLoop | None = None
        self.sends = 0
        self.marks: list[str] = []

    def __call__(self, *messages: str) -> None:
        self.sends += 1
        if self.sends == 2 and self.loop is not None:
            self.loop.feed(tm.Mark(self.marks[0]))
        if self.sends == 3:
            raise tm.StreamClosed("BrokenPipeError")
        for message in messages:
            frame = json.loads(message)
            if frame["event"] == "mark":
                self.marks.append(frame["mark"]["name"])


def stage(kind: str, provider: Any) -> Stage[Any]:
    return Stage(kind, provider, provider)


class ReadingLlm:
    """Each token comes from a read of its socket (`before_read`, as the Groq client's
    stream does); records when each read was made."""

    name = "reading"

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.reads: list[float] = []

    def stream(self, context: AgentContext, history: list[ChatMessage]) -> Iterator[LlmEvent]:
        for token in self.tokens:
            before_read()
            self.reads.append(time.monotonic())
            yield LlmEvent(LlmEventKind.TOKEN, token)
        yield LlmEvent(LlmEventKind.DONE)


class EndTimedTurn(ScriptedTurn):
    """Records how long two reads take in the reply's greenlet once the LLM is done."""

    def __init__(self, took: list[float]) -> None:
        self.took = took

    def end(self) -> None:
        started = time.monotonic()
        before_read()
        before_read()
        self.took.append(time.monotonic() - started)


def call_loop(
    send: tm.Sender,
    records: Records,
    stt: Any,
    llm: Any = None,
    tts: Any = None,
) -> CallLoop:
    return CallLoop(
        send=send,
        providers=CallProviders(
            stt=stage("stt", stt),
            tts=stage("tts", tts or ScriptedTts()),
            llm=stage("llm", llm or ScriptedLlm()),
            sentiment=stage("sentiment", NeutralSentiment()),
        ),
        setup=CallSetup(AgentContext(persona="", greeting="Hi", closing="Bye"), None, "en"),
        sink=records,
        on_end_call=lambda: None,
        on_transfer=lambda to: None,
    )


def test_a_send_failing_before_the_reader_sees_the_drop_records_the_turn_as_cut_off() -> None:
    socket, records = DroppingSocket(), Records()
    loop = call_loop(socket, records, SilentStt())
    socket.loop = loop
    loop.start()
    with gevent.Timeout(5):
        while not records.turns:
            gevent.sleep(0.01)
    loop.close()
    assert socket.sends == 3
    [greeting] = records.turns
    assert greeting.speaker == "agent"
    assert greeting.interrupted
    assert greeting.text == "one"  # the first 100 ms of one second: a tenth of the words


def test_a_closed_loop_is_freed_by_reference_counting() -> None:
    """The voice worker runs no full collection while calls are up: a call's objects left
    in a reference cycle (its STT stream holds the loop's handlers, a killed greenlet the
    frames it stopped in) would stay until one ran."""
    with no_automatic_collections():
        sent: list[tuple[str, ...]] = []
        loop = call_loop(lambda *messages: sent.append(messages), Records(), ListeningStt())
        loop.start()
        with gevent.Timeout(5):
            while not sent:  # the greeting is playing
                gevent.sleep(0.01)
        loop.close()
        assert alive(CallLoop) == 1
        del loop
        gevent.sleep(0.05)  # the hub lets go of the killed greenlets
        assert alive(CallLoop) == 0, "the closed loop is still referenced"


def test_a_replys_llm_reads_are_spaced_once_its_first_sentence_is_with_the_tts() -> None:
    """Until the first sentence goes to the TTS every token is read as it comes (the
    caller waits for it); after it the reads come at most every LLM_READ_PACE_S, each
    taking what arrived meanwhile; once the reply is done its greenlet reads freely."""
    llm = ReadingLlm(["Sure", ".", " We", " open", " at", " nine", "."])
    took: list[float] = []

    class Tts(ScriptedTts):
        def start_turn(self, voice: str | None, language: str) -> ScriptedTurn:
            return EndTimedTurn(took)

    records = Records()
    loop = call_loop(lambda *messages: None, records, SilentStt(), llm, Tts())
    loop.start()
    with gevent.Timeout(5):
        while not took:
            gevent.sleep(0.01)
    loop.close()
    gaps = [b - a for a, b in zip(llm.reads, llm.reads[1:], strict=False)]
    # "Sure." is pushed when " We" shows it ended: the reads up to " We" are not spaced.
    assert max(gaps[:2]) < LLM_READ_PACE_S / 2
    assert min(gaps[2:]) >= LLM_READ_PACE_S * 0.9
    assert took[0] < LLM_READ_PACE_S / 2
