"""The offline agent: greeting, phrase rules and knowledge answers, word by word."""

from __future__ import annotations

import importlib.util
import re
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from shared.providers.embeddings.base import EMBEDDING_DIM, EmbeddingsProvider, Purpose
from shared.providers.llm.base import (
    AgentContext,
    ChatMessage,
    KnowledgeItem,
    LlmEvent,
    LlmEventKind,
)
from shared.providers.llm.local import FALLBACK, FALLBACK_NO_TRANSFER, TRANSFER, LocalAgent

_STOP = frozenset(
    {"a", "an", "the", "is", "are", "do", "does", "you", "your", "i", "my", "me", "to", "of"}
    | {"for", "what", "how", "can", "there"}
)


class BagOfWords:
    """Deterministic fake embeddings: content words hashed into 384 dimensions, normalised."""

    name = "bag-of-words"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Purpose]] = []

    def embed(self, texts: list[str], purpose: Purpose = "document") -> list[list[float]]:
        self.calls.append((list(texts), purpose))
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> list[float]:
        vector = np.zeros(EMBEDDING_DIM)
        for word in re.findall(r"[a-z]+", text.lower()):
            if word not in _STOP:
                vector[zlib.crc32(word.rstrip("s").encode()) % EMBEDDING_DIM] += 1.0
        norm = np.linalg.norm(vector)
        return list(vector / norm) if norm else list(vector)


KNOWLEDGE = (
    KnowledgeItem("What are your opening hours?", "We're open nine to five, Monday to Friday."),
    KnowledgeItem("Where is the clinic located?", "We're at 12 Main Street, next to the library."),
    KnowledgeItem("Do you accept insurance?", "We accept Delta Dental, Aetna and Cigna."),
    KnowledgeItem("Is there parking?", "Yes, free parking behind the building."),
)
CONTEXT = AgentContext(
    persona="You are Sam at Acme Dental.",
    greeting="Hello, thanks for calling Acme Dental. How can I help you today?",
    closing="Thanks for calling Acme Dental. Goodbye!",
    knowledge=KNOWLEDGE,
)
GREETED = [ChatMessage("assistant", CONTEXT.greeting)]


def ask(text: str) -> list[ChatMessage]:
    return [*GREETED, ChatMessage("user", text)]


def with_(**changes: object) -> AgentContext:
    return AgentContext(**{**CONTEXT.__dict__, **changes})


def said(events: list[LlmEvent]) -> str:
    return "".join(e.text for e in events if e.kind is LlmEventKind.TOKEN)


def tool_calls(events: list[LlmEvent]) -> list[tuple[str | None, dict[str, object]]]:
    return [(e.tool, e.arguments) for e in events if e.kind is LlmEventKind.TOOL_CALL]


@pytest.fixture
def embeddings() -> BagOfWords:
    return BagOfWords()


@pytest.fixture
def agent(embeddings: BagOfWords) -> LocalAgent:
    return LocalAgent(embeddings)


@pytest.mark.parametrize("history", [[], [ChatMessage("user", "hello?")]], ids=["silent", "spoke"])
def test_the_first_turn_is_the_configured_greeting_word_by_word(
    agent: LocalAgent, history: list[ChatMessage]
) -> None:
    events = list(agent.stream(CONTEXT, history))

    assert said(events) == CONTEXT.greeting
    assert [e.text for e in events[:3]] == ["Hello,", " thanks", " for"]
    assert events[-1].kind is LlmEventKind.DONE
    assert tool_calls(events) == []


def test_a_returning_customer_is_welcomed_back_by_name(agent: LocalAgent) -> None:
    context = with_(customer_name="Ada", is_returning_customer=True)

    assert said(list(agent.stream(context, []))) == (
        "Welcome back, Ada! Thanks for calling Acme Dental. How can I help you today?"
    )
    anonymous = with_(is_returning_customer=True)
    assert said(list(agent.stream(anonymous, []))).startswith("Welcome back! Thanks for")


def test_the_greeting_can_mention_the_callers_point_from_the_last_call(
    embeddings: BagOfWords,
) -> None:
    memory = "caller: hi | agent: hello | caller: my crown came loose again | agent: come in today"
    context = with_(customer_name="Ada", is_returning_customer=True, memories=(memory, "older"))

    greeting = said(list(LocalAgent(embeddings, mention_memory=True).stream(context, [])))

    assert greeting.startswith(
        "Welcome back, Ada! I have a note from your last call: my crown came loose again. Thanks"
    )


def test_a_question_worded_like_a_knowledge_entry_gets_its_answer(
    agent: LocalAgent, embeddings: BagOfWords
) -> None:
    events = list(agent.stream(CONTEXT, ask("Hi, what are the opening hours?")))

    assert said(events) == "We're open nine to five, Monday to Friday."
    assert tool_calls(events) == []
    assert (["Hi, what are the opening hours?"], "query") in embeddings.calls


def test_an_unrelated_question_gets_the_polite_fallback(agent: LocalAgent) -> None:
    question = "Can you recommend a pizza place?"

    assert said(list(agent.stream(CONTEXT, ask(question)))) == FALLBACK_NO_TRANSFER
    with_transfer = with_(transfer_number="+14155550100")
    assert said(list(agent.stream(with_transfer, ask(question)))) == FALLBACK


@pytest.mark.parametrize(
    "words",
    ["Bye!", "Thanks, that's all.", "OK, goodbye then", "No, that's it, have a nice day"],
)
def test_a_goodbye_hears_the_closing_and_ends_the_call(agent: LocalAgent, words: str) -> None:
    events = list(agent.stream(CONTEXT, ask(words)))

    assert said(events) == CONTEXT.closing
    assert tool_calls(events) == [("end_call", {})]
    assert events[-1].kind is LlmEventKind.DONE


def test_no_after_anything_else_ends_the_call_but_thanks_alone_does_not(agent: LocalAgent) -> None:
    thanked = list(agent.stream(CONTEXT, ask("Thank you so much!")))
    assert said(thanked) == "You're welcome! Is there anything else I can help you with?"
    assert tool_calls(thanked) == []

    history = [*ask("thanks"), ChatMessage("assistant", said(thanked))]
    events = list(agent.stream(CONTEXT, [*history, ChatMessage("user", "No.")]))
    assert tool_calls(events) == [("end_call", {})]


@pytest.mark.parametrize("words", ["Can I speak to a person?", "transfer me please", "A human!"])
def test_a_request_for_a_person_is_transferred_to_the_configured_number(
    agent: LocalAgent, words: str
) -> None:
    context = with_(transfer_number="+14155550100")

    events = list(agent.stream(context, ask(words)))

    assert said(events) == TRANSFER
    assert tool_calls(events) == [("transfer_call", {"to": "+14155550100"})]


@pytest.mark.parametrize(
    "words",
    [
        "Am I all set for my appointment on Tuesday?",
        "Can I transfer my appointment to Friday?",
        "I said bye to my old dentist last year and I am looking for a new one",
    ],
)
def test_words_that_only_contain_a_goodbye_or_transfer_phrase_are_not_taken_for_one(
    agent: LocalAgent, words: str
) -> None:
    context = with_(transfer_number="+14155550100")

    events = list(agent.stream(context, ask(words)))

    assert tool_calls(events) == []


def test_without_a_transfer_number_a_request_for_a_person_is_offered_a_message(
    agent: LocalAgent,
) -> None:
    events = list(agent.stream(CONTEXT, ask("Let me talk to someone")))

    assert "take a message" in said(events)
    assert tool_calls(events) == []


def test_the_same_conversation_always_gets_the_same_reply(embeddings: BagOfWords) -> None:
    history = ask("Do you accept my insurance?")

    replies = [list(LocalAgent(embeddings).stream(CONTEXT, history)) for _ in range(3)]

    assert replies[0] == replies[1] == replies[2]
    assert said(replies[0]) == "We accept Delta Dental, Aetna and Cigna."


def test_knowledge_is_embedded_once_when_prepared_and_stored_embeddings_are_not_embedded_again(
    agent: LocalAgent, embeddings: BagOfWords
) -> None:
    agent.prepare(CONTEXT)
    for question in ("Is there parking?", "Where is the clinic?", "What are the hours?"):
        list(agent.stream(CONTEXT, ask(question)))
    documents = [texts for texts, purpose in embeddings.calls if purpose == "document"]
    assert len(documents) == 1
    assert len(documents[0]) == 2 * len(KNOWLEDGE)  # question, and question with answer
    assert embeddings.calls[0][1] == "document"  # prepared before the first question

    stored = tuple(
        KnowledgeItem(k.question, k.answer, embeddings.embed([k.question])[0]) for k in KNOWLEDGE
    )
    context = with_(knowledge=stored)
    embeddings.calls.clear()
    events = list(LocalAgent(embeddings).stream(context, ask("Is there parking?")))
    assert said(events) == "Yes, free parking behind the building."
    assert [purpose for _, purpose in embeddings.calls] == ["query"]


def _minilm() -> EmbeddingsProvider | None:
    if importlib.util.find_spec("shared.providers.embeddings.local") is None:
        return None
    from shared.providers.embeddings.local import LocalEmbeddings

    return LocalEmbeddings()


@pytest.fixture(scope="module")
def minilm() -> Iterator[EmbeddingsProvider]:
    provider = _minilm()
    if provider is None:
        pytest.skip("shared/providers/embeddings/local.py (LocalEmbeddings) does not exist yet")
    yield provider


def test_with_minilm_paraphrases_find_their_answer_and_other_questions_do_not(
    minilm: EmbeddingsProvider,
) -> None:
    agent = LocalAgent(minilm)
    expected = {
        "When are you open?": KNOWLEDGE[0].answer,
        "Where's the clinic?": KNOWLEDGE[1].answer,
        "Is Delta Dental accepted?": KNOWLEDGE[2].answer,
        "Can I park there?": KNOWLEDGE[3].answer,
        "What's the weather like tomorrow?": FALLBACK_NO_TRANSFER,
        "Tell me a joke": FALLBACK_NO_TRANSFER,
        "I want to book an appointment": FALLBACK_NO_TRANSFER,  # in domain, not covered
    }

    replies = {q: said(list(agent.stream(CONTEXT, ask(q)))) for q in expected}

    assert replies == expected
