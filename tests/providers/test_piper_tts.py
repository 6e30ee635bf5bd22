"""The local TTS: Piper's en_US joe voice as 8 kHz μ-law, sentence by sentence, cancellable."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from shared.providers.tts import local
from shared.providers.tts.local import CHUNK_BYTES, PiperTts, PiperTurn
from shared.voice.audio import ulaw_to_pcm16
from tests.conftest import run_fresh
from tests.providers.playing import Player, collect

FIRST = "Hello, thanks for calling Switchboard. "
SECOND = "I can book, move or cancel an appointment for you today."


@pytest.fixture(scope="module")
def tts() -> PiperTts:
    provider = PiperTts()
    provider.warm_up()
    return provider


def timed_audio(turn: PiperTurn) -> tuple[list[bytes], list[float]]:
    """The turn's chunks and the seconds after the call at which each arrived."""
    player = Player(turn)
    assert player.join(60)
    assert player.error is None
    return player.chunks, player.times


def seconds(ulaw: bytes) -> float:
    return len(ulaw) / 8000


def rms(ulaw: bytes) -> float:
    samples = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


@pytest.fixture(scope="module")
def two_sentences(tts: PiperTts) -> tuple[list[bytes], list[float]]:
    turn = tts.start_turn("a-cartesia-voice-id", "en")
    turn.push(FIRST)
    turn.push(SECOND)
    turn.end()
    return timed_audio(turn)


def test_two_pushed_sentences_come_out_as_audible_8khz_ulaw_of_speech_length(
    two_sentences: tuple[list[bytes], list[float]],
) -> None:
    chunks, _ = two_sentences
    audio = b"".join(chunks)
    assert all(0 < len(c) <= CHUNK_BYTES for c in chunks)
    # ~15 characters a second of speech: 96 characters is about 6 s at 8000 bytes a second.
    assert 1.0 < seconds(audio) < 10.0
    assert rms(audio) > 1000  # full-scale speech; μ-law silence decodes to ~0


def test_the_first_sentence_is_heard_before_the_second_is_synthesised(
    two_sentences: tuple[list[bytes], list[float]],
) -> None:
    _, times = two_sentences
    # Chunks of one sentence arrive together; the second sentence's come well after.
    assert times[-1] - times[0] > 0.1


def test_cancel_ends_the_audio_at_once_and_nothing_more_is_played(tts: PiperTts) -> None:
    turn = tts.start_turn(None, "en")
    turn.push(FIRST)
    turn.push(SECOND + " " + SECOND)
    player = Player(turn)
    assert player.first.wait(30)
    started = time.perf_counter()
    turn.cancel()
    assert player.join(1)
    elapsed = time.perf_counter() - started
    played = len(player.chunks)
    time.sleep(0.3)
    assert len(player.chunks) == played
    assert player.error is None
    assert elapsed < 0.3
    turn.cancel()  # idempotent
    assert turn.wait(30)  # the sentence in flight finishes in the background


def test_a_turn_cancelled_before_any_audio_plays_nothing(tts: PiperTts) -> None:
    turn = tts.start_turn(None, "en")
    turn.push(SECOND)
    turn.cancel()
    assert collect(turn) == b""
    assert turn.wait(30)


def test_time_to_first_audio_and_real_time_factor(tts: PiperTts) -> None:
    firsts = []
    for _ in range(5):
        turn = tts.start_turn(None, "en")
        turn.push("Sure, one moment.")
        turn.end()
        _, times = timed_audio(turn)
        firsts.append(times[0])
    turn = tts.start_turn(None, "en")
    started = time.perf_counter()
    turn.push(SECOND)
    turn.end()
    length = seconds(collect(turn))
    rtf = (time.perf_counter() - started) / length
    ttfa = statistics.median(firsts)
    print(f"\nPiper TTFA p50 {ttfa * 1000:.0f} ms (short sentence), RTF {rtf:.2f}")
    assert ttfa < 2.0
    assert rtf < 1.0


def test_synthesis_runs_off_the_gevent_hub_when_monkey_patched() -> None:
    script = """
from gevent import monkey; monkey.patch_all()
import time, gevent
from shared.providers.tts.local import PiperTts
ticks = []
def tick():
    while True:
        ticks.append(time.perf_counter()); gevent.sleep(0.005)
ticker = gevent.spawn(tick)
tts = PiperTts(); tts.warm_up()
turn = tts.start_turn(None, "en"); turn.push("How can I help you today?"); turn.end()
chunks = []
turn.play(chunks.append)
audio = b"".join(chunks)
gap = max(b - a for a, b in zip(ticks, ticks[1:]))
print(len(audio), round(gap * 1000))
"""
    length, gap_ms = map(int, run_fresh(script).split())
    assert length > 4000  # > 0.5 s of audio
    assert gap_ms < 250  # the hub kept running (the model load included)


def test_a_synthesis_failure_is_raised_from_play(
    tts: PiperTts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("onnxruntime failed")

    monkeypatch.setattr(local, "_next_ulaw", broken)
    turn = tts.start_turn(None, "en")
    turn.push(FIRST)
    turn.end()

    with pytest.raises(RuntimeError, match="onnxruntime failed"):
        collect(turn)
