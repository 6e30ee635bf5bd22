"""What did the caller hear? Transcribe recorded agent audio (8 kHz μ-law) with Whisper."""

from __future__ import annotations

from shared.providers.stt.whisper import load_whisper
from shared.voice.audio import Resampler, pcm16_to_float32, ulaw_to_pcm16

WINDOW_S = 25  # Whisper's window is 30 s


def transcribe_ulaw(ulaw: bytes) -> str:
    pcm = Resampler(8000, 16000).convert(ulaw_to_pcm16(ulaw))
    audio = pcm16_to_float32(pcm)
    whisper = load_whisper()
    step = WINDOW_S * 16000
    return " ".join(
        whisper.transcribe(audio[i : i + step]) for i in range(0, len(audio), step)
    ).strip()
