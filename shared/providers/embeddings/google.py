"""Google Gemini embeddings (`gemini-embedding-001`) over the google-genai SDK.

gemini-embedding-001 returns 3072 dimensions by default; our pgvector columns hold 384, so
we ask for `output_dimensionality=384`, a Matryoshka truncation (the model is trained so the
leading dimensions work alone). Truncated vectors are not unit length, so they are
L2-normalised here, as the EmbeddingsProvider interface promises.

Every request goes through `guard("google")`, which owns timeouts and retries: the SDK's
own retries are off and each attempt passes the guard's timeout to the request.
(google-genai 3.6 sends with httpx2, a fork of httpx; the guard knows its network errors.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from google import genai
from google.genai import types

from shared.config import Settings
from shared.providers.embeddings.base import EMBEDDING_DIM, Purpose
from shared.resilience import guard

PROVIDER = "google"
DEFAULT_MODEL = "gemini-embedding-001"
# The Gemini API takes at most 100 requests per batchEmbedContents call.
MAX_BATCH = 100
_TASK_TYPES: dict[Purpose, str] = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"}


class EmbeddingsResponseError(Exception):
    """Google answered, but not with one usable vector per text."""


def normalise(values: Sequence[float]) -> list[float]:
    """`values` scaled to unit L2 length (a zero vector is an error, not a direction)."""
    norm = math.sqrt(math.fsum(v * v for v in values))
    if norm == 0.0 or not math.isfinite(norm):
        raise EmbeddingsResponseError("Google returned a zero or non-finite vector")
    return [v / norm for v in values]


class GoogleEmbeddings:
    """EmbeddingsProvider over the Gemini API: 384-d unit vectors, queries and documents
    embedded with their retrieval task types."""

    name = "google"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = DEFAULT_MODEL,
        dimensions: int = EMBEDDING_DIM,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        # retry_options with one attempt: the SDK must not retry behind the guard's back.
        options = types.HttpOptions(
            base_url=base_url, retry_options=types.HttpRetryOptions(attempts=1)
        )
        self._client = genai.Client(api_key=api_key, http_options=options)

    @classmethod
    def from_settings(cls, settings: Settings) -> GoogleEmbeddings:
        """The provider configured by GOOGLE_API_KEY (and GOOGLE_API_URL, for fakes)."""
        if not settings.google_api_key:
            raise RuntimeError("GOOGLE_API_KEY is not set (needed for EMBEDDINGS_PROVIDER=google)")
        return cls(settings.google_api_key, settings.google_api_url)

    def embed(self, texts: list[str], purpose: Purpose = "document") -> list[list[float]]:
        """One unit vector of `dimensions` floats per text, in order; one guarded request
        per 100 texts. Permanent API errors (400, 403) raise google.genai.errors.ClientError;
        exhausted retries raise ProviderUnavailable."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), MAX_BATCH):
            vectors.extend(self._batch(texts[start : start + MAX_BATCH], purpose))
        return vectors

    def _batch(self, texts: list[str], purpose: Purpose) -> list[list[float]]:
        def attempt(timeout: float) -> types.EmbedContentResponse:
            config = types.EmbedContentConfig(
                task_type=_TASK_TYPES[purpose],
                output_dimensionality=self.dimensions,
                http_options=types.HttpOptions(timeout=math.ceil(timeout * 1000)),
            )
            return self._client.models.embed_content(
                model=self.model, contents=list(texts), config=config
            )

        response = guard(PROVIDER).call(attempt)
        embeddings = response.embeddings or []
        if len(embeddings) != len(texts):
            raise EmbeddingsResponseError(f"{len(embeddings)} vectors for {len(texts)} texts")
        return [self._vector(e.values) for e in embeddings]

    def _vector(self, values: list[float] | None) -> list[float]:
        if not values or len(values) != self.dimensions:
            size = len(values or [])
            raise EmbeddingsResponseError(f"a vector of {size} floats, not {self.dimensions}")
        return normalise(values)
