"""Sentiment: VADER locally; Groq's real SDK against a local chat-completions fake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import groq
import pytest

from scripts.fakes.groq_chat import DEFAULT_KEY, PATH, chat_route, groq_error
from scripts.fakes.http_fake import HttpFake, Reply
from shared.providers.sentiment.groq import (
    DEFAULT_MODEL,
    SYSTEM_PROMPT,
    GroqSentiment,
    SentimentError,
    parse_sentiment,
)
from shared.providers.sentiment.local import VaderSentiment
from shared.resilience import guard


class Answers:
    """What the fake model says next: one scripted content string per request."""

    def __init__(self) -> None:
        self.next = '{"sentiment": 0.0}'

    def __call__(self, body: dict[str, Any]) -> str:
        return self.next


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[HttpFake, Answers]]:
    answers = Answers()
    server = HttpFake(chat_route(answers)).start()
    yield server, answers
    server.stop()


@pytest.fixture
def fake(served: tuple[HttpFake, Answers]) -> HttpFake:
    server, _ = served
    server.requests.clear()
    server.failures.clear()
    return server


@pytest.fixture
def answers(served: tuple[HttpFake, Answers]) -> Answers:
    _, scripted = served
    scripted.next = '{"sentiment": 0.0}'
    return scripted


@pytest.fixture
def sentiment(fake: HttpFake) -> GroqSentiment:
    return GroqSentiment(DEFAULT_KEY, fake.url)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(guard("groq"), "sleep", recorded.append)
    return recorded


@pytest.fixture(scope="module")
def vader() -> VaderSentiment:
    provider = VaderSentiment()
    provider.warm_up()
    return provider


def test_vader_scores_clear_praise_positive(vader: VaderSentiment) -> None:
    assert vader.score("Thank you so much, that was really helpful and friendly!") > 0.3


def test_vader_scores_clear_anger_negative(vader: VaderSentiment) -> None:
    assert vader.score("This is terrible. I'm furious and nobody ever helps me.") < -0.3


def test_vader_scores_empty_text_as_neutral(vader: VaderSentiment) -> None:
    assert vader.score("") == 0.0


def test_groq_is_asked_for_json_at_temperature_zero_with_the_text_as_the_user_message(
    fake: HttpFake, sentiment: GroqSentiment, answers: Answers
) -> None:
    answers.next = '{"sentiment": 0.8}'

    assert sentiment.score("Great, thanks!") == pytest.approx(0.8)

    [request] = fake.received(PATH, "POST")
    assert request.headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    body = request.json()
    assert body["model"] == DEFAULT_MODEL == "llama-3.1-8b-instant"
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Great, thanks!"},
    ]
    assert "stream" not in body or body["stream"] is False


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"sentiment": -0.35}', -0.35),
        ('{"sentiment": 3}', 1.0),
        ('{"sentiment": -7.5}', -1.0),
        ('{"sentiment": "0.4"}', 0.4),
        ('```json\n{"sentiment": 0.25}\n```', 0.25),
        (' {"sentiment": 0, "reason": "neutral"} ', 0.0),
    ],
)
def test_groq_answers_are_parsed_and_clamped(
    sentiment: GroqSentiment, answers: Answers, content: str, expected: float
) -> None:
    answers.next = content

    assert sentiment.score("…") == pytest.approx(expected)


@pytest.mark.parametrize(
    "content",
    [
        "positive",
        '{"sentiment": ',
        '{"score": 0.5}',
        '{"sentiment": "very positive"}',
        '{"sentiment": true}',
        '{"sentiment": NaN}',
        "[0.5]",
        "",
    ],
)
def test_a_malformed_groq_answer_raises_a_sentiment_error(
    sentiment: GroqSentiment, answers: Answers, content: str
) -> None:
    answers.next = content

    with pytest.raises(SentimentError):
        sentiment.score("…")


def test_parse_sentiment_rejects_a_missing_message() -> None:
    with pytest.raises(SentimentError):
        parse_sentiment(None)


def test_a_groq_503_is_retried_by_the_guard(
    fake: HttpFake, sentiment: GroqSentiment, answers: Answers, waits: list[float]
) -> None:
    fake.fail_next(Reply(503, {"error": {"message": "Service Unavailable"}}))
    answers.next = '{"sentiment": -0.5}'

    assert sentiment.score("meh") == pytest.approx(-0.5)
    assert len(fake.received(PATH)) == 2  # the SDK itself did not retry
    assert len(waits) == 1


def test_a_wrong_groq_key_is_a_permanent_error(fake: HttpFake, waits: list[float]) -> None:
    with pytest.raises(groq.AuthenticationError):
        GroqSentiment("gsk_wrong", fake.url).score("hello")

    assert len(fake.received(PATH)) == 1
    assert waits == []


def test_a_groq_json_validation_failure_is_not_retried(
    fake: HttpFake, sentiment: GroqSentiment, waits: list[float]
) -> None:
    fake.fail_next(groq_error(400, "Failed to generate JSON.", "json_validate_failed"))

    with pytest.raises(groq.BadRequestError):
        sentiment.score("hello")

    assert waits == []


def test_groq_settings_without_a_key_are_refused() -> None:
    from shared.config import Settings

    with pytest.raises(RuntimeError, match="GROQ_API_KEY"):
        GroqSentiment.from_settings(Settings(groq_api_key=None))
