"""Groq sentiment: a small, fast model asked for `{"sentiment": <-1..1>}` in JSON mode.

One guarded request per text (`guard("groq")`; the SDK's own retries are off). An answer
that is not such JSON raises `SentimentError`; the caller falls back to VADER then, as it
does on `ProviderUnavailable` or a permanent API error (`groq.APIStatusError`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from groq.types.chat import ChatCompletion

from shared.config import Settings
from shared.providers.groq_client import groq_client
from shared.resilience import guard

PROVIDER = "groq"
DEFAULT_MODEL = "llama-3.1-8b-instant"
SYSTEM_PROMPT = (
    "You rate the sentiment of what a caller said on a phone call. Reply with JSON only: "
    '{"sentiment": <number from -1 (very negative) to 1 (very positive), 0 if neutral>}.'
)
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class SentimentError(Exception):
    """The model's answer held no usable sentiment score."""


def parse_sentiment(content: str | None) -> float:
    """The score in `content` (a JSON object with a numeric "sentiment"), clamped to
    [-1, 1]. Tolerates text around the object, e.g. a markdown fence."""
    match = _OBJECT.search(content or "")
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise SentimentError(f"not a JSON object: {_preview(content)}")
    value = _number(data.get("sentiment"))
    if value is None:
        raise SentimentError(f"no numeric 'sentiment': {_preview(content)}")
    return max(-1.0, min(1.0, value))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # ints, floats and numeric strings such as "0.4"
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _preview(content: str | None) -> str:
    return repr((content or "")[:80])


class GroqSentiment:
    """SentimentProvider over Groq chat completions (sync client, temperature 0)."""

    name = "groq"

    def __init__(
        self, api_key: str, base_url: str | None = None, model: str = DEFAULT_MODEL
    ) -> None:
        self.model = model
        self._client = groq_client(api_key, base_url)
        # The SDK imports its chat modules on first use (~12 ms): at start-up, not in a call.
        _ = self._client.chat.completions

    @classmethod
    def from_settings(cls, settings: Settings) -> GroqSentiment:
        """The provider configured by GROQ_API_KEY (and GROQ_URL, for fakes)."""
        if not settings.groq_api_key:
            raise RuntimeError("GROQ_API_KEY is not set (needed for SENTIMENT_PROVIDER=groq)")
        return cls(settings.groq_api_key, settings.groq_url)

    def score(self, text: str) -> float:
        """The sentiment of `text` in [-1, 1]. Raises SentimentError on a malformed answer."""

        def attempt(timeout: float) -> ChatCompletion:
            return self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                ],
                temperature=0,
                max_completion_tokens=20,
                response_format={"type": "json_object"},
                timeout=timeout,
            )

        completion = guard(PROVIDER).call(attempt)
        if not completion.choices:
            raise SentimentError("the completion has no choices")
        return parse_sentiment(completion.choices[0].message.content)
