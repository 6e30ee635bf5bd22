"""GoogleEmbeddings: the real google-genai client against a local Gemini API fake."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
from google.genai import errors

from scripts.fakes.google_embeddings import (
    DEFAULT_KEY,
    FakeGoogleEmbeddings,
    fake_vector,
    google_error,
    start_fake_google_embeddings,
)
from shared.config import Settings
from shared.providers.embeddings.google import GoogleEmbeddings
from shared.resilience import ProviderUnavailable, guard


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGoogleEmbeddings]:
    started = start_fake_google_embeddings()
    yield started
    started.stop()


@pytest.fixture
def fake(server: FakeGoogleEmbeddings) -> FakeGoogleEmbeddings:
    server.http.requests.clear()
    server.http.failures.clear()
    return server


@pytest.fixture
def google(fake: FakeGoogleEmbeddings) -> GoogleEmbeddings:
    return GoogleEmbeddings(DEFAULT_KEY, fake.url)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The guard's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(guard("google"), "sleep", recorded.append)
    return recorded


def test_a_query_is_sent_as_one_batch_with_the_task_type_and_384_dimensions(
    fake: FakeGoogleEmbeddings, google: GoogleEmbeddings
) -> None:
    google.embed(["When are you open?", "Where do I park?"], purpose="query")

    [request] = fake.requests
    assert request.path == "/v1/models/gemini-embedding-001:batchEmbedContents"
    assert request.headers["x-goog-api-key"] == DEFAULT_KEY
    assert request.json() == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": text}], "role": "user"},
                "taskType": "RETRIEVAL_QUERY",
                "outputDimensionality": 384,
            }
            for text in ["When are you open?", "Where do I park?"]
        ]
    }


def test_documents_use_the_retrieval_document_task_type(
    fake: FakeGoogleEmbeddings, google: GoogleEmbeddings
) -> None:
    google.embed(["We open at 9."])

    [body] = fake.received()
    assert body["requests"][0]["taskType"] == "RETRIEVAL_DOCUMENT"


def test_truncated_vectors_come_back_normalised_in_the_order_sent(
    google: GoogleEmbeddings,
) -> None:
    texts = ["first", "second", "third"]
    raw = [fake_vector(text, 384) for text in texts]
    assert not math.isclose(math.hypot(*raw[0]), 1.0, abs_tol=1e-3)  # the fake truncates

    vectors = google.embed(texts)

    for vector, values in zip(vectors, raw, strict=True):
        assert len(vector) == 384
        assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-9)
        scale = math.hypot(*values)
        assert vector == pytest.approx([v / scale for v in values])


def test_more_than_100_texts_are_split_into_batches_of_100(
    fake: FakeGoogleEmbeddings, google: GoogleEmbeddings
) -> None:
    vectors = google.embed([f"text {n}" for n in range(150)])

    assert len(vectors) == 150
    assert [len(body["requests"]) for body in fake.received()] == [100, 50]


def test_no_texts_make_no_request(fake: FakeGoogleEmbeddings, google: GoogleEmbeddings) -> None:
    assert google.embed([]) == []
    assert fake.requests == []


def test_a_503_is_retried_once_by_the_guard_and_then_succeeds(
    fake: FakeGoogleEmbeddings, google: GoogleEmbeddings, waits: list[float]
) -> None:
    fake.fail_next(google_error(503, "UNAVAILABLE", "The model is overloaded."))

    [vector] = google.embed(["hello"])

    assert len(fake.requests) == 2  # the SDK did not retry on its own
    assert len(waits) == 1
    assert len(vector) == 384


def test_a_400_is_raised_at_once_without_a_retry(
    fake: FakeGoogleEmbeddings, google: GoogleEmbeddings, waits: list[float]
) -> None:
    fake.fail_next(google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))

    with pytest.raises(errors.ClientError) as raised:
        google.embed(["hello"])

    assert raised.value.code == 400
    assert len(fake.requests) == 1
    assert waits == []


def test_a_wrong_api_key_is_a_permanent_error(fake: FakeGoogleEmbeddings) -> None:
    with pytest.raises(errors.ClientError, match="API key not valid"):
        GoogleEmbeddings("wrong-key", fake.url).embed(["hello"])

    assert len(fake.requests) == 1


def test_each_attempt_gets_the_guards_timeout_and_slow_answers_give_up(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    google_guard = guard("google")
    monkeypatch.setattr(
        google_guard, "policy", dataclasses.replace(google_guard.policy, timeout=0.2)
    )
    slow = start_fake_google_embeddings(latency_ms=1000)
    try:
        with pytest.raises(ProviderUnavailable, match="3 attempts failed"):
            GoogleEmbeddings(DEFAULT_KEY, slow.url).embed(["hello"])
        assert len(slow.requests) == 3
        assert {r.headers["x-server-timeout"] for r in slow.requests} == {"1"}
    finally:
        slow.stop()


def test_settings_without_a_key_are_refused() -> None:
    with pytest.raises(RuntimeError, match="GOOGLE_API_KEY"):
        GoogleEmbeddings.from_settings(Settings(google_api_key=None))
