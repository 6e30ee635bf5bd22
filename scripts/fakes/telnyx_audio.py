"""μ-law audio for the fake phone: WAV in, 20 ms frames out, what was heard back to WAV."""

from __future__ import annotations

import warnings
import wave
from pathlib import Path

from scripts.fakes.telnyx_playout import BYTES_PER_SECOND
from shared.voice.audio import Resampler, pcm16_to_ulaw, ulaw_to_pcm16

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 (PEP 594); audioop-lts keeps the same API on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
SILENCE = b"\xff"  # μ-law zero


def silence_ulaw(seconds: float) -> bytes:
    """`seconds` of 8 kHz μ-law silence."""
    return SILENCE * round(seconds * BYTES_PER_SECOND)


def frames_of(ulaw: bytes) -> list[bytes]:
    """`ulaw` cut into 20 ms frames, the last one padded with silence."""
    frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] = frames[-1].ljust(FRAME_BYTES, SILENCE)
    return frames


def pcmu_from_wav(path: str | Path) -> bytes:
    """Any PCM WAV (8/16/24/32-bit, mono or stereo, any rate) as 8 kHz mono μ-law."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        data = wav.readframes(wav.getnframes())
    if width == 1:
        data = audioop.bias(data, 1, -128)  # 8-bit WAV is unsigned
    if width != 2:
        data = audioop.lin2lin(data, width, 2)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels; only mono and stereo are supported")
    return pcm16_to_ulaw(Resampler(rate, BYTES_PER_SECOND).convert(data))


def write_ulaw_wav(
    path: str | Path, pieces: list[tuple[float, bytes]], *, with_gaps: bool = False
) -> None:
    """Write timed μ-law pieces as 8 kHz 16-bit mono WAV; `with_gaps` fills the time
    between pieces with silence so the file keeps the real timing."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(BYTES_PER_SECOND)
        wav.writeframes(ulaw_to_pcm16(_joined(pieces, with_gaps)))


def _joined(pieces: list[tuple[float, bytes]], with_gaps: bool) -> bytes:
    if not with_gaps or not pieces:
        return b"".join(audio for _, audio in pieces)
    out = bytearray()
    cursor = pieces[0][0]
    for start, audio in pieces:
        out += SILENCE * max(0, round((start - cursor) * BYTES_PER_SECOND))
        out += audio
        cursor = start + len(audio) / BYTES_PER_SECOND
    return bytes(out)
