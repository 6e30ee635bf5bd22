"""Audio codecs shared by the voice loop and the providers: G.711 μ-law ↔ 16-bit PCM and a
stateful resampler. All PCM is signed 16-bit little-endian mono.

`audioop` is in the standard library up to Python 3.12 and comes from the `audioop-lts`
package (same import name) on 3.13+. Each call costs a few µs per 20 ms frame.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 (PEP 594); audioop-lts keeps the same API on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_WIDTH = 2  # bytes per 16-bit sample


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode G.711 μ-law bytes to 16-bit PCM (two bytes per input byte)."""
    return audioop.ulaw2lin(ulaw, SAMPLE_WIDTH)


def pcm16_to_ulaw(pcm16: bytes) -> bytes:
    """Encode 16-bit PCM to G.711 μ-law (one byte per sample)."""
    return audioop.lin2ulaw(pcm16, SAMPLE_WIDTH)


def ulaw_rms(ulaw: bytes) -> int:
    """Root-mean-square level of μ-law audio, in 16-bit PCM units (about 1 µs a frame)."""
    return int(audioop.rms(audioop.ulaw2lin(ulaw, SAMPLE_WIDTH), SAMPLE_WIDTH))


def pcm16_to_float32(pcm16: bytes) -> np.ndarray:
    """16-bit PCM as float32 samples in [-1, 1) (the input models such as Whisper take)."""
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0


class Resampler:
    """Converts a 16-bit PCM stream from `src_rate` to `dst_rate`, chunk by chunk.

    The filter state is kept between chunks, so a stream cut into frames comes out as if it
    had been converted in one piece (no clicks at frame edges). One instance per stream.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._state: Any = None
        self._odd = b""  # a trailing half sample, kept for the next chunk

    def convert(self, pcm16: bytes) -> bytes:
        """Resample the next chunk of the stream (any length)."""
        data = self._odd + pcm16
        cut = len(data) - len(data) % SAMPLE_WIDTH
        data, self._odd = data[:cut], data[cut:]
        if self.src_rate == self.dst_rate or not data:
            return data
        out, self._state = audioop.ratecv(
            data, SAMPLE_WIDTH, 1, self.src_rate, self.dst_rate, self._state
        )
        return bytes(out)

    def reset(self) -> None:
        """Forget the stream so far (a new, unrelated stream follows)."""
        self._state = None
        self._odd = b""
