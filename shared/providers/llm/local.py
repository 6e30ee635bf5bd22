"""The offline agent: answers from the agent's own configuration, deterministically.

The first turn is the greeting ("Welcome back, Ada! …" for a returning customer). Later
turns go by simple phrase rules first (goodbye → closing and end_call; asking for a person →
transfer_call when a number is configured), then by meaning: the knowledge entry most
similar to the caller's words answers, if similar enough, else a polite fallback.

Each entry is scored by the better of two cosines: to its question alone, and to its
question followed by its answer (the answer names things a caller may ask about, e.g. the
insurers accepted). Measured with all-MiniLM-L6-v2 on two small dental FAQs (30 paraphrases,
26 other questions): paraphrases that found their entry mostly scored 0.57 to 0.95, and 6 of
30 scored 0.2 to 0.45 (e.g. "which street are you on" for "Where is the clinic located?");
small talk and unrelated questions scored at most 0.35, but an uncovered in-domain request
("I want to book an appointment") reached 0.48. `THRESHOLD` = 0.5 keeps all of those out:
a wrong answer is worse than the fallback, which offers a message.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from shared.providers.embeddings.base import EMBEDDING_DIM, EmbeddingsProvider
from shared.providers.llm.base import (
    AgentContext,
    ChatMessage,
    KnowledgeItem,
    LlmEvent,
    LlmEventKind,
)

THRESHOLD = 0.5
CACHE_SIZE = 1024  # knowledge entries
FALLBACK = "I'm not sure about that — I can take a message or connect you with someone."
FALLBACK_NO_TRANSFER = "I'm not sure about that, but I can take a message for the team."
NO_TRANSFER = "I'm sorry, I can't transfer calls right now, but I can take a message for the team."
TRANSFER = "Of course, I'll connect you with someone now."
WELCOME = "You're welcome! Is there anything else I can help you with?"
NOT_HEARD = "Sorry, I didn't catch that. Could you say it again?"

_GOODBYE = re.compile(
    r"\b(good ?bye|bye|bye bye|that'?s all|that is all|that'?s it|that is it|nothing else|"
    r"no more questions|i'?m done|all set|have a (good|nice|great) (day|one|evening)|"
    r"talk to you later|see you later)\b"
)
_GOODBYE_WORDS = 8  # a longer turn, or a question, says more than goodbye
_NO = re.compile(r"^(no|nope|nah|no thanks?|no thank you|not really|i'?m good|i'?m fine)$")
_THANKS = re.compile(r"^(ok(ay)? |great |perfect )?(thanks?|thank you)( (so|very) much| a lot)?$")
_TRANSFER = re.compile(
    r"\b(transfer me|transfer (the |my |this )?call|put me through|connect me|human|operator|"
    r"representative|real person|live (person|agent)|"
    r"(speak|talk) (to|with) (a |an |the |some )?(person|agent|someone|somebody|manager|staff))\b"
)
_SALUTATION = re.compile(
    r"^(hi|hello|hey|good (morning|afternoon|evening))( there)?[,!.]?\s+", re.I
)
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)")
_CALLER = frozenset({"caller", "customer", "user"})

Matrix = npt.NDArray[np.float32]
Turn = tuple[str, str | None, dict[str, str]]  # text, tool, tool arguments
Pair = tuple[list[float], list[float]]  # question vector, question+answer vector


def normalise(text: str) -> str:
    """Lower case, apostrophes unified, other punctuation dropped, spaces collapsed."""
    text = text.lower().replace("\u2019", "'")
    return " ".join(re.sub(r"[^\w\s']", " ", text).split())


def words(text: str) -> Iterator[str]:
    """`text` as TOKEN pieces: each word with the space before it."""
    for i, word in enumerate(text.split()):
        yield word if i == 0 else " " + word


class LocalAgent:
    """`LlmProvider` without a network: greeting, phrase rules, knowledge by similarity."""

    name = "local"

    def __init__(
        self,
        embeddings: EmbeddingsProvider,
        threshold: float = THRESHOLD,
        mention_memory: bool = False,
    ) -> None:
        self.embeddings = embeddings
        self.threshold = threshold
        self.mention_memory = mention_memory
        self._cache: OrderedDict[tuple[str, str], Pair] = OrderedDict()
        self._lock = threading.Lock()

    def stream(
        self, context: AgentContext, history: list[ChatMessage]
    ) -> Generator[LlmEvent, None, None]:
        """The reply word by word, then any tool call, then DONE."""
        text, tool, arguments = self.reply(context, history)
        for piece in words(text):
            yield LlmEvent(LlmEventKind.TOKEN, text=piece)
        if tool is not None:
            yield LlmEvent(LlmEventKind.TOOL_CALL, tool=tool, arguments=arguments)
        yield LlmEvent(LlmEventKind.DONE)

    def reply(self, context: AgentContext, history: list[ChatMessage]) -> Turn:
        """(text, tool or None, tool arguments) for this turn."""
        if not any(m.role == "assistant" for m in history):
            return self.greeting(context), None, {}
        question = _last(history, "user")
        if not normalise(question):
            return NOT_HEARD, None, {}
        by_rule = _by_rule(context, question, normalise(_last(history, "assistant")))
        return by_rule or (self.answer(context, question), None, {})

    def greeting(self, context: AgentContext) -> str:
        """The configured greeting, personalised for a returning customer."""
        if not context.is_returning_customer:
            return context.greeting
        name = f", {context.customer_name}" if context.customer_name else ""
        parts = [f"Welcome back{name}!"]
        if self.mention_memory and context.memories:
            parts.append(f"I have a note from your last call: {_brief(context.memories[0])}")
        rest = _SALUTATION.sub("", context.greeting.strip())
        parts.append(rest[:1].upper() + rest[1:])
        return " ".join(p for p in parts if p)

    def prepare(self, context: AgentContext, dim: int = EMBEDDING_DIM) -> None:
        """Embed the knowledge now (e.g. while the greeting plays), not on the first question."""
        if context.knowledge:
            self._vectors(context.knowledge, dim)

    def answer(self, context: AgentContext, question: str) -> str:
        """The most similar knowledge entry's answer, or the fallback."""
        fallback = FALLBACK if context.transfer_number else FALLBACK_NO_TRANSFER
        if not context.knowledge:
            return fallback
        query = np.asarray(self.embeddings.embed([question], "query")[0], dtype=np.float32)
        by_question, by_entry = self._vectors(context.knowledge, len(query))
        scores = np.maximum(by_question @ query, by_entry @ query)
        best = int(np.argmax(scores))  # the first of equals: deterministic
        if float(scores[best]) < self.threshold:
            return fallback
        return context.knowledge[best].answer

    def _vectors(self, items: Sequence[KnowledgeItem], dim: int) -> tuple[Matrix, Matrix]:
        """(question vectors, question+answer vectors); a stored embedding serves as both,
        other entries are embedded once and cached by their text."""
        known: dict[tuple[str, str], Pair] = {}
        with self._lock:
            for item in items:
                if item.embedding is not None and len(item.embedding) == dim:
                    known[_key(item)] = (item.embedding, item.embedding)
                elif (pair := self._cache.get(_key(item))) is not None:
                    self._cache.move_to_end(_key(item))
                    known[_key(item)] = pair
        missing = list({_key(i): i for i in items if _key(i) not in known}.values())
        if missing:
            known.update(self._embed(missing))
        rows = [known[_key(item)] for item in items]
        return (
            np.asarray([q for q, _ in rows], dtype=np.float32),
            np.asarray([qa for _, qa in rows], dtype=np.float32),
        )

    def _embed(self, items: list[KnowledgeItem]) -> dict[tuple[str, str], Pair]:
        texts = [i.question for i in items] + [f"{i.question} {i.answer}" for i in items]
        vectors = self.embeddings.embed(texts, "document")
        fresh = {_key(item): (vectors[n], vectors[len(items) + n]) for n, item in enumerate(items)}
        with self._lock:
            self._cache.update(fresh)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return fresh


def _key(item: KnowledgeItem) -> tuple[str, str]:
    return item.question, item.answer


def _by_rule(context: AgentContext, question: str, asked: str) -> Turn | None:
    """The turn for a goodbye, a thank-you or a request for a person, else None."""
    said = normalise(question)
    short = len(said.split()) <= _GOODBYE_WORDS and "?" not in question
    if short and (_GOODBYE.search(said) or (_NO.match(said) and "anything else" in asked)):
        return context.closing, "end_call", {}
    if _THANKS.match(said):
        return WELCOME, None, {}
    if not _TRANSFER.search(said):
        return None
    if context.transfer_number:
        return TRANSFER, "transfer_call", {"to": context.transfer_number}
    return NO_TRANSFER, None, {}


def _last(history: list[ChatMessage], role: str) -> str:
    return next((m.content for m in reversed(history) if m.role == role), "")


def _brief(memory: str) -> str:
    """The memory's gist in one short sentence. A transcript summary ("caller: … | agent: …")
    gives the caller's longest line."""
    parts = [segment.split(":", 1) for segment in memory.split(" | ")]
    said = [p[1].strip() for p in parts if len(p) == 2 and p[0].strip().lower() in _CALLER]
    text = " ".join((max(said, key=len) if said else memory).split())
    match = _FIRST_SENTENCE.match(text)
    text = match.group(1) if match else text
    if len(text) > 100:
        text = text[:100].rsplit(" ", 1)[0]
    return text if text.endswith((".", "!", "?")) else text + "."
