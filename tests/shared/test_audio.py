"""The shared audio codecs: μ-law ↔ PCM16 and the stateful resampler."""

from __future__ import annotations

import math
import struct

import numpy as np

from shared.voice.audio import Resampler, pcm16_to_float32, pcm16_to_ulaw, ulaw_to_pcm16


def _tone(rate: int, seconds: float, hz: float = 440.0) -> bytes:
    n = int(rate * seconds)
    samples = [int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)]
    return struct.pack(f"<{n}h", *samples)


def test_ulaw_to_pcm_and_back_is_the_identity_on_all_256_codes() -> None:
    codes = bytes(range(256))
    pcm = ulaw_to_pcm16(codes)
    assert len(pcm) == 512
    back = pcm16_to_ulaw(pcm)
    # 0x7F and 0xFF both decode to 0 (μ-law's two zeros); encoding 0 gives 0xFF.
    expected = bytes(0xFF if c == 0x7F else c for c in codes)
    assert back == expected


def test_ulaw_silence_decodes_to_zero_samples() -> None:
    assert ulaw_to_pcm16(b"\xff" * 160) == b"\x00" * 320


def test_resampler_output_length_follows_the_rate_ratio() -> None:
    for src, dst in ((8000, 16000), (24000, 8000), (16000, 8000)):
        pcm = _tone(src, 1.0)
        out = Resampler(src, dst).convert(pcm)
        expected = len(pcm) * dst // src
        assert abs(len(out) - expected) <= 8, (src, dst, len(out), expected)


def test_resampling_in_20ms_chunks_equals_resampling_in_one_piece() -> None:
    pcm = _tone(8000, 0.5)
    whole = Resampler(8000, 16000).convert(pcm)
    streamed = Resampler(8000, 16000)
    chunks = b"".join(streamed.convert(pcm[i : i + 320]) for i in range(0, len(pcm), 320))
    assert abs(len(chunks) - len(whole)) <= 4
    n = min(len(chunks), len(whole)) // 2
    a = np.frombuffer(chunks[: n * 2], dtype="<i2").astype(int)
    b = np.frombuffer(whole[: n * 2], dtype="<i2").astype(int)
    assert np.max(np.abs(a - b)) <= 2


def test_resampler_keeps_an_odd_trailing_byte_for_the_next_chunk() -> None:
    pcm = _tone(8000, 0.1)
    r = Resampler(8000, 8000)
    assert r.convert(pcm[:3]) + r.convert(pcm[3:]) == pcm


def test_pcm16_to_float32_scales_to_the_unit_range() -> None:
    samples = pcm16_to_float32(struct.pack("<3h", -32768, 0, 16384))
    assert samples.dtype == np.float32
    assert samples.tolist() == [-1.0, 0.0, 0.5]
