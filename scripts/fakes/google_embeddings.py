"""A local Gemini API embeddings endpoint, as google-genai's sync client calls it.

    POST /{api_version}/models/{model}:batchEmbedContents     (v1 by default in google-genai 3.6)
    x-goog-api-key: <key>
    {"requests": [{"model": "models/{model}", "content": {"parts": [{"text": …}], "role": "user"},
                   "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 384}, …]}
 -> {"embeddings": [{"values": [...]}, …]}

Vectors are deterministic: a unit 3072-d vector seeded by the text, cut to
`outputDimensionality` as Matryoshka truncation does (so a cut vector is not unit length).
Errors use Google's shape `{"error": {"code", "message", "status"}}`. `latency_ms` delays
every answer; `fail_next` (from HttpFake) queues scripted failures.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from scripts.fakes.http_fake import HttpFake, Recorded, Reply

DEFAULT_KEY = "test-google-key"
FULL_DIMENSIONS = 3072
MAX_BATCH = 100
_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([\w.-]+):batchEmbedContents$")


def fake_vector(text: str, dimensions: int = FULL_DIMENSIONS) -> list[float]:
    """The fake's embedding of `text`: the first `dimensions` of a seeded unit vector."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    full = np.random.default_rng(seed).standard_normal(FULL_DIMENSIONS)
    return [float(v) for v in (full / np.linalg.norm(full))[:dimensions]]


def google_error(code: int, status: str, message: str) -> Reply:
    """A reply in the Gemini API's error shape."""
    return Reply(code, {"error": {"code": code, "message": message, "status": status}})


class FakeGoogleEmbeddings:
    """The fake server; `requests`/`received()` hold what arrived, newest last."""

    def __init__(self, api_key: str = DEFAULT_KEY, latency_ms: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = latency_ms / 1000
        self.http = HttpFake(self._route)

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def requests(self) -> list[Recorded]:
        return self.http.received()

    def received(self) -> list[dict[str, Any]]:
        """The JSON bodies of the batchEmbedContents calls received so far."""
        return [r.json() for r in self.http.received(":batchEmbedContents", "POST")]

    def start(self) -> FakeGoogleEmbeddings:
        self.http.start()
        return self

    def stop(self) -> None:
        self.http.stop()

    def fail_next(self, *replies: Reply) -> None:
        self.http.fail_next(*replies)

    def _route(self, recorded: Recorded) -> Reply:
        reply = self._answer(recorded)
        reply.delay = self.latency
        return reply

    def _answer(self, recorded: Recorded) -> Reply:
        match = _PATH.match(recorded.path.split("?")[0])
        if recorded.method != "POST" or match is None:
            return google_error(404, "NOT_FOUND", f"no route {recorded.method} {recorded.path}")
        key = recorded.headers.get("x-goog-api-key")
        if key is None:
            return google_error(
                403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"
            )
        if key != self.api_key:
            return google_error(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            )
        return _embed(match.group(2), recorded.json() or {})


def _embed(model: str, body: dict[str, Any]) -> Reply:
    requests = body.get("requests") or []
    if not requests or len(requests) > MAX_BATCH:
        return google_error(
            400, "INVALID_ARGUMENT", f"between 1 and {MAX_BATCH} requests per batch"
        )
    embeddings = []
    for request in requests:
        if request.get("model") != f"models/{model}":
            return google_error(400, "INVALID_ARGUMENT", "each request's model must match the URL")
        texts = [part.get("text", "") for part in request.get("content", {}).get("parts", [])]
        dimensions = int(request.get("outputDimensionality") or FULL_DIMENSIONS)
        if not texts or not 1 <= dimensions <= FULL_DIMENSIONS:
            return google_error(400, "INVALID_ARGUMENT", "content and outputDimensionality")
        embeddings.append({"values": fake_vector(" ".join(texts), dimensions)})
    return Reply(200, {"embeddings": embeddings})


def start_fake_google_embeddings(
    api_key: str = DEFAULT_KEY, latency_ms: float = 0.0
) -> FakeGoogleEmbeddings:
    """A started fake; point `GoogleEmbeddings(base_url=fake.url)` at it."""
    return FakeGoogleEmbeddings(api_key, latency_ms).start()
