"""The LLM interface the voice loop uses: a streamed reply to the conversation so far."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class KnowledgeItem:
    question: str
    answer: str
    embedding: list[float] | None = None  # filled when known (local agent matches on it)


@dataclass(frozen=True)
class AgentContext:
    """Everything the agent knows for one call, loaded once before the call starts."""

    persona: str
    greeting: str
    closing: str
    language: str = "en"
    knowledge: tuple[KnowledgeItem, ...] = ()
    customer_name: str | None = None
    is_returning_customer: bool = False
    memories: tuple[str, ...] = ()  # most relevant first
    insights: str | None = None  # a suggested approach learned from past calls
    transfer_number: str | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


class LlmEventKind(StrEnum):
    TOKEN = "token"  # noqa: S105 - a piece of reply text, not a credential
    TOOL_CALL = "tool_call"  # end_call / transfer_call with arguments
    DONE = "done"


@dataclass(frozen=True)
class LlmEvent:
    kind: LlmEventKind
    text: str = ""
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


TOOLS = ("end_call", "transfer_call")


class LlmProvider(Protocol):
    name: str

    def stream(self, context: AgentContext, history: list[ChatMessage]) -> Iterator[LlmEvent]:
        """Reply to the last user message. Closing the iterator cancels the request."""
