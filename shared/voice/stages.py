"""The providers one call uses, each with the local fallback it switches to for the rest
of the call when the real one fails (circuit open, timeout, dropped stream)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.observability.metrics import VOICE_FALLBACKS
from shared.providers.llm.base import LlmProvider
from shared.providers.sentiment.base import SentimentProvider
from shared.providers.stt.base import SttProvider
from shared.providers.tts.base import TtsProvider

log = logging.getLogger(__name__)
P = TypeVar("P")


@dataclass
class Stage(Generic[P]):
    kind: str
    primary: P
    fallback: P
    failed: bool = False

    @property
    def current(self) -> P:
        return self.fallback if self.failed else self.primary

    @property
    def can_fall_back(self) -> bool:
        return not self.failed and self.primary is not self.fallback

    def fall_back(self, reason: BaseException) -> P:
        if self.can_fall_back:
            self.failed = True
            VOICE_FALLBACKS.labels(self.kind, getattr(self.primary, "name", "?")).inc()
            log.warning(
                "%s provider failed, using the local one for this call: %r", self.kind, reason
            )
        return self.current


@dataclass
class CallProviders:
    stt: Stage[SttProvider]
    tts: Stage[TtsProvider]
    llm: Stage[LlmProvider]
    sentiment: Stage[SentimentProvider]

    def close(self) -> None:
        """Release per-call connections (a real TTS keeps one socket per call)."""
        close = getattr(self.tts.primary, "close", None)
        if close is not None and self.tts.primary is not self.tts.fallback:
            close()
