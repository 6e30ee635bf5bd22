"""Which provider each stage uses, from `*_PROVIDER` or, unset, the key being present.

Local providers are always built too: they are the fallback a call switches to when a
real provider fails. Real SDK modules are imported only when configured.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from typing import Any

from shared.config import Settings
from shared.providers.embeddings.base import EmbeddingsProvider
from shared.providers.embeddings.local import LocalEmbeddings
from shared.providers.llm.base import LlmProvider
from shared.providers.llm.local import LocalAgent
from shared.providers.sentiment.base import SentimentProvider
from shared.providers.sentiment.local import VaderSentiment
from shared.providers.stt.base import SttProvider
from shared.providers.stt.local import LocalStt
from shared.providers.tts.base import TtsProvider
from shared.providers.tts.local import PiperTts
from shared.voice.stages import CallProviders, Stage

log = logging.getLogger(__name__)


def uses_real(choice: str | None, key: str | None) -> bool:
    """An explicit `*_PROVIDER` wins; otherwise the real provider when its key is set."""
    if choice is not None:
        return choice != "local"
    return bool(key)


@dataclass
class ProviderSet:
    settings: Settings
    embeddings: EmbeddingsProvider
    local_stt: LocalStt
    local_tts: PiperTts
    local_llm: LocalAgent
    local_sentiment: VaderSentiment
    stt: SttProvider
    llm: LlmProvider
    sentiment: SentimentProvider
    real_tts: bool

    def for_call(self) -> CallProviders:
        """Stages for one call: fallbacks switch per call; Cartesia gets its own socket."""
        return CallProviders(
            stt=Stage("stt", self.stt, self.local_stt),
            tts=Stage("tts", self._tts_for_call(), self.local_tts),
            llm=Stage("llm", self.llm, self.local_llm),
            sentiment=Stage("sentiment", self.sentiment, self.local_sentiment),
        )

    def _tts_for_call(self) -> TtsProvider:
        if not self.real_tts:
            return self.local_tts
        from shared.providers.tts.cartesia import CartesiaTts

        return CartesiaTts(self.settings)

    def warm_up(self) -> None:
        """Load every local model (they are also the fallbacks). Run off the audio path."""
        for provider in (self.embeddings, self.local_stt, self.local_tts):
            warm: Any = getattr(provider, "warm_up", None)
            if warm is not None:
                try:
                    warm()
                except Exception:
                    log.exception("warm-up of %s failed", type(provider).__name__)


def build_embeddings(settings: Settings) -> EmbeddingsProvider:
    if uses_real(settings.embeddings_provider, settings.google_api_key):
        from shared.providers.embeddings.google import GoogleEmbeddings

        return GoogleEmbeddings.from_settings(settings)
    return LocalEmbeddings()


def _pay_start_up_costs(settings: Settings, real_tts: bool) -> None:
    """Pay now, at start-up, once, for what the first call would otherwise pay while other
    calls wait (under gevent, CPU spent in one call stalls them all):
    - the TLS context (and Cartesia's SDK client): ~45 ms of CPU each (see tls.py);
    - the platform the groq and cartesia SDKs report in headers on their first request:
      Python's `platform` learns the processor by running `uname -p`, a fork of the whole
      voice process, which stalled every call for ~30 ms when the first call spoke (seen in
      the voice benchmark's greenlet traces). Cached for the process from then on."""
    from shared.providers.tls import client_context, share_with_websockets

    share_with_websockets()
    client_context()
    platform.platform()
    if real_tts and settings.cartesia_api_key:
        from shared.providers.tts.cartesia import DEFAULT_URL, sdk_client

        sdk_client(settings.cartesia_api_key, settings.cartesia_url or DEFAULT_URL)


def build_providers(settings: Settings) -> ProviderSet:
    embeddings = build_embeddings(settings)
    local_stt = LocalStt(silence_ms=settings.voice_silence_ms)
    local_llm = LocalAgent(embeddings if embeddings.name == "local" else LocalEmbeddings())
    local_sentiment = VaderSentiment()
    stt: SttProvider = local_stt
    if uses_real(settings.stt_provider, settings.deepgram_api_key):
        from shared.providers.stt.deepgram import DeepgramStt

        stt = DeepgramStt(settings)
    llm: LlmProvider = local_llm
    if uses_real(settings.llm_provider, settings.groq_api_key):
        from shared.providers.llm.groq import GroqLlm

        llm = GroqLlm.from_settings(settings)
    sentiment: SentimentProvider = local_sentiment
    if uses_real(settings.sentiment_provider, settings.groq_api_key):
        from shared.providers.sentiment.groq import GroqSentiment

        sentiment = GroqSentiment.from_settings(settings)
    real_tts = uses_real(settings.tts_provider, settings.cartesia_api_key)
    if real_tts or any(p.name != "local" for p in (stt, llm, sentiment)):
        _pay_start_up_costs(settings, real_tts)
    providers = ProviderSet(
        settings=settings,
        embeddings=embeddings,
        local_stt=local_stt,
        local_tts=PiperTts(),
        local_llm=local_llm,
        local_sentiment=local_sentiment,
        stt=stt,
        llm=llm,
        sentiment=sentiment,
        real_tts=real_tts,
    )
    log.info(
        "providers: stt=%s tts=%s llm=%s sentiment=%s embeddings=%s",
        stt.name,
        "cartesia" if providers.real_tts else "local",
        llm.name,
        sentiment.name,
        embeddings.name,
    )
    return providers
