"""LocalStt (Silero VAD + Whisper tiny.en) on real recorded speech.

The fixture is Piper's en_US-joe voice saying "When are you open on Saturday?" as 8 kHz
μ-law: 300 ms of silence, then speech to the last byte.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from shared.providers.stt.base import SttEvent, SttEventKind
from shared.providers.stt.local import LocalStt
from shared.voice.audio import pcm16_to_ulaw

FIXTURE = Path(__file__).parent / "fixtures" / "caller_when_open.ulaw"
FRAME = 160  # 20 ms of 8 kHz μ-law
SILENCE = b"\xff"


@pytest.fixture(scope="module")
def stt() -> LocalStt:
    provider = LocalStt(silence_ms=500)
    provider.warm_up()
    return provider


@pytest.fixture(scope="module")
def speech() -> bytes:
    return FIXTURE.read_bytes()


class Events:
    def __init__(self) -> None:
        self.items: list[SttEvent] = []

    def __call__(self, event: SttEvent) -> None:
        self.items.append(event)

    @property
    def kinds(self) -> list[SttEventKind]:
        return [e.kind for e in self.items]


def stream(stt: LocalStt, audio: bytes, *, real_time: bool) -> tuple[Events, list[float]]:
    """Send `audio` in 20 ms frames (paced like a phone call if `real_time`); returns the
    events and the monotonic time each frame was sent."""
    events = Events()
    sent: list[float] = []
    s = stt.open("en-US", events)
    start = time.monotonic()
    for i in range(0, len(audio), FRAME):
        if real_time:
            time.sleep(max(0.0, start + i / 8000 - time.monotonic()))
        s.send(audio[i : i + FRAME])
        sent.append(time.monotonic())
    s.close()  # waits for the transcription of anything detected
    return events, sent


def test_a_spoken_question_is_speech_started_then_its_text_then_the_end_of_turn(
    stt: LocalStt, speech: bytes
) -> None:
    events, sent = stream(stt, speech + SILENCE * 8000, real_time=True)

    assert events.kinds == [
        SttEventKind.SPEECH_STARTED,
        SttEventKind.FINAL,
        SttEventKind.END_OF_TURN,
    ]
    started, final, end = events.items
    onset = sent[2400 // FRAME - 1]  # after the fixture's 300 ms of leading silence
    assert 0 < started.at - onset < 0.25
    assert "open" in final.text.lower()
    assert "saturday" in final.text.lower()
    assert end.text == final.text
    true_end = sent[len(speech) // FRAME - 1]
    assert end.speech_ended_at is not None
    assert abs(end.speech_ended_at - true_end) < 0.1
    assert final.speech_ended_at == end.speech_ended_at
    # The turn ends after silence_ms of silence (plus the transcription), not before.
    assert end.at - true_end >= 0.5


def test_silence_and_line_noise_produce_no_events(stt: LocalStt) -> None:
    rng = np.random.default_rng(7)
    hiss = (rng.normal(0, 150, 16000)).astype("<i2").tobytes()  # 2 s at about -47 dBFS
    audio = SILENCE * 16000 + pcm16_to_ulaw(hiss) + SILENCE * 8000

    events, _ = stream(stt, audio, real_time=False)

    assert events.items == []


def test_a_short_pause_keeps_both_phrases_in_one_turn(stt: LocalStt, speech: bytes) -> None:
    pause = SILENCE * 2400  # 300 ms, under silence_ms
    second = speech[2400:]  # without its leading silence
    events, _ = stream(stt, speech + pause + second + SILENCE * 8000, real_time=False)

    assert events.kinds == [
        SttEventKind.SPEECH_STARTED,
        SttEventKind.FINAL,
        SttEventKind.END_OF_TURN,
    ]
    assert events.items[2].text.lower().count("saturday") == 2


def test_closing_mid_utterance_still_delivers_what_was_said(stt: LocalStt, speech: bytes) -> None:
    events = Events()
    s = stt.open("en-US", events)
    for i in range(0, len(speech), FRAME):
        s.send(speech[i : i + FRAME])

    s.close()
    s.close()

    assert events.kinds == [
        SttEventKind.SPEECH_STARTED,
        SttEventKind.FINAL,
        SttEventKind.END_OF_TURN,
    ]
    assert "saturday" in events.items[2].text.lower()
    s.send(speech[:FRAME])  # after close: ignored
    assert len(events.items) == 3


def test_open_accepts_and_ignores_an_error_callback(stt: LocalStt) -> None:
    errors: list[BaseException] = []
    s = stt.open("en-US", Events(), on_error=errors.append)
    s.send(SILENCE * 1600)
    s.close()
    assert errors == []
