"""Groq streaming chat completions with the end_call / transfer_call tools.

The request is opened through the guard (429 with Retry-After, 5xx and network errors are
retried there; the SDK's own retries are off). Once tokens flow, a failure is not retried:
it raises `LlmStreamError` and the call loop falls back. Closing the generator closes the
HTTP response, so the server stops generating for a caller who interrupted.

The system prompt is kept short on purpose: Groq's time to first token grows with input
tokens, so knowledge, memories and insights arrive pre-selected and are trimmed here.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import groq
import httpx
import orjson

from shared.config import Settings
from shared.providers.groq_client import groq_client
from shared.providers.llm.base import AgentContext, ChatMessage, LlmEvent, LlmEventKind
from shared.resilience import guard

log = logging.getLogger(__name__)

PROVIDER = "groq"
CHAT_COMPLETIONS = "/openai/v1/chat/completions"
DEFAULT_MODEL = "llama-3.3-70b-versatile"
MAX_KNOWLEDGE = 5
MAX_MEMORIES = 3
VOICE_RULES = (
    "You are speaking with a caller on the phone. Reply in one to three short sentences "
    "of plain spoken language: no markdown, lists, emojis or links. Ask at most one question "
    "at a time. If you do not know something, say so and offer to take a message; never "
    "invent facts, prices or policies."
)


class LlmError(Exception):
    """Groq refused the request (a permanent error such as 400 or 401)."""


class LlmStreamError(LlmError):
    """The reply broke off after streaming had started."""


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def system_prompt(context: AgentContext) -> str:
    """The system prompt for one call: persona, voice rules, caller, knowledge."""
    parts = [context.persona.strip(), VOICE_RULES]
    if context.language != "en":
        parts.append(f"Always reply in the language with code '{context.language}'.")
    parts.append(f'Start of the call: greet with "{_clip(context.greeting, 300)}"')
    parts.append(f'When the caller is done, say "{_clip(context.closing, 300)}" and call end_call.')
    if context.transfer_number:
        parts.append("If the caller asks for a person, or you cannot help, call transfer_call.")
    parts.extend(_caller_lines(context))
    if context.knowledge:
        facts = [
            f"Q: {_clip(item.question, 200)} A: {_clip(item.answer, 500)}"
            for item in context.knowledge[:MAX_KNOWLEDGE]
        ]
        parts.append("Knowledge (answer only from this):\n" + "\n".join(facts))
    return "\n".join(parts)


def _caller_lines(context: AgentContext) -> list[str]:
    who = f"The caller is {_clip(context.customer_name, 80)}" if context.customer_name else ""
    if context.is_returning_customer:
        who = (who or "The caller") + ", a returning customer; welcome them back"
    lines = [who + "."] if who else []
    if context.memories:
        notes = [f"- {_clip(m, 200)}" for m in context.memories[:MAX_MEMORIES]]
        lines.append("Notes from earlier calls:\n" + "\n".join(notes))
    if context.insights:
        lines.append(f"Suggested approach: {_clip(context.insights, 300)}")
    return lines


def tools(context: AgentContext) -> list[dict[str, Any]]:
    """The tools offered: end_call always, transfer_call only with a transfer number."""
    offered = [
        _tool(
            "end_call",
            "Hang up, after you have said goodbye.",
            {"reason": {"type": "string", "description": "Why the call ends."}},
            [],
        )
    ]
    if context.transfer_number:
        to = {"type": "string", "enum": [context.transfer_number], "description": "E.164."}
        offered.append(
            _tool("transfer_call", "Transfer the caller to a person.", {"to": to}, ["to"])
        )
    return offered


def _tool(
    name: str, description: str, props: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    parameters = {"type": "object", "properties": props, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


@dataclass
class _PendingCall:
    """One tool call being streamed: its name, then its arguments in fragments."""

    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, delta: dict[str, Any]) -> None:
        function = delta.get("function") or {}
        if function.get("name"):
            self.name = function["name"]
        if function.get("arguments"):
            self.arguments.append(function["arguments"])


class GroqLlm:
    """`LlmProvider` over Groq's sync SDK client (one per process; thread/greenlet-safe)."""

    name = PROVIDER

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = DEFAULT_MODEL,
        temperature: float = 0.6,
        max_completion_tokens: int = 200,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.max_completion_tokens = max_completion_tokens
        self._client = groq_client(api_key, base_url)
        # The SDK imports its chat modules on first use (~12 ms): at start-up, not in a call.
        _ = self._client.chat.completions

    @classmethod
    def from_settings(cls, settings: Settings, model: str = DEFAULT_MODEL) -> GroqLlm:
        """The provider configured by GROQ_API_KEY (required) and GROQ_URL."""
        if not settings.groq_api_key:
            raise RuntimeError("GROQ_API_KEY is not set: the groq LLM provider needs it")
        return cls(settings.groq_api_key, settings.groq_url, model)

    def request(self, context: AgentContext, history: list[ChatMessage]) -> dict[str, Any]:
        """The chat-completions arguments for this turn."""
        messages = [{"role": "system", "content": system_prompt(context)}]
        messages += [{"role": m.role, "content": m.content} for m in history]
        return {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": self.temperature,
            "max_completion_tokens": self.max_completion_tokens,
            "tools": tools(context),
            "tool_choice": "auto",
        }

    def stream(
        self, context: AgentContext, history: list[ChatMessage]
    ) -> Generator[LlmEvent, None, None]:
        """Reply tokens as they arrive, then any tool call, then DONE."""
        body = self.request(context, history)
        response = self._open(body)
        try:
            yield from self._events(response, context)
        finally:
            response.close()

    def _open(self, body: dict[str, Any]) -> httpx.Response:
        def attempt(timeout: float) -> httpx.Response:
            # The SDK's own POST, the way its README documents for custom requests:
            # create() first walks the whole body through the SDK's type transform (0.9 ms
            # per reply with a short history on this CPU, every reply of every call), for a
            # body that is plain JSON already. Its answer is the HTTP response itself, its
            # body not read yet (`cast_to=httpx.Response`): the events are decoded from it
            # (`_chunks`). `Stream[ChatCompletionChunk]` would build a model of every token
            # in pure Python (~130 µs against json's ~5 µs, 20-60 a reply), and an SDK
            # `Stream` left unread kept each finished request's ~60 objects alive until a
            # garbage collection (docs/voice-benchmark-log.md, "Three decoders").
            response: httpx.Response = self._client.post(
                CHAT_COMPLETIONS,
                body=body,
                cast_to=httpx.Response,
                options={"timeout": timeout},
                stream=True,
            )
            return response

        try:
            return guard(PROVIDER).call(attempt)
        except groq.APIStatusError as exc:
            msg = f"groq refused the request: {exc.status_code} {_error_message(exc)}"
            raise LlmError(msg) from exc

    def _events(self, response: httpx.Response, context: AgentContext) -> Iterator[LlmEvent]:
        calls: dict[int, _PendingCall] = {}
        tokens = 0
        try:
            for chunk in _chunks(response):
                if error := chunk.get("error"):
                    raise LlmStreamError(
                        f"groq stream broke after {tokens} tokens: {_stream_error(error)}"
                    )
                for delta in _deltas(chunk):
                    content = delta.get("content")
                    if content and isinstance(content, str):
                        tokens += 1
                        yield LlmEvent(LlmEventKind.TOKEN, text=content)
                    for call in delta.get("tool_calls") or ():
                        if isinstance(call, dict):
                            calls.setdefault(call.get("index", 0), _PendingCall()).add(call)
        except (groq.APIError, httpx.HTTPError) as exc:
            msg = f"groq stream broke after {tokens} tokens: {type(exc).__name__}"
            raise LlmStreamError(msg) from exc
        for index in sorted(calls):
            event = _tool_event(calls[index], context)
            if event is not None:
                yield event
        yield LlmEvent(LlmEventKind.DONE)


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON object of each server-sent event of the stream, up to `[DONE]`.

    Decoded here, from the SDK's HTTP response, rather than by iterating the SDK's `Stream`:
    its SSE decoder goes line by line in pure Python, ~25 µs of the ~170 µs a token costs
    the voice worker (scripts/bench/voice.py's Groq replies, one read per token). Named
    events other than `error` carry no completion (the SDK passes them on wrapped, and
    `_deltas` found nothing in them); an `error` event's JSON is yielded for the caller."""
    pending = b""
    received = response.iter_bytes()
    for data in received:
        *events, pending = _EVENT_END.split(pending + data if pending else data)
        for event in events:
            name, payload = _sse_fields(event)
            if payload is None or name not in (None, "error"):
                continue
            if payload.startswith(b"[DONE]"):
                for _ in received:  # read to the end: the connection goes back to the pool
                    pass
                return
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise LlmStreamError("groq sent an event that is not JSON") from exc
            if isinstance(chunk, dict):
                yield chunk


def _sse_fields(event: bytes) -> tuple[str | None, bytes | None]:
    """An event's name (None: unnamed) and its data lines joined (None: no data)."""
    if event.startswith(b"data: ") and b"\n" not in event and b"\r" not in event:
        return None, event[6:]  # nearly every event: one data line
    name: str | None = None
    data: list[bytes] = []
    for line in event.splitlines():
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode(errors="replace")
    return name, b"\n".join(data) if data else None


def _stream_error(error: object) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "an error event"


def _deltas(chunk: object) -> list[dict[str, Any]]:
    """The `delta` of each choice in a chat.completion.chunk (as decoded JSON); a chunk of
    another shape (Groq's usage-only last chunk, anything malformed) has none."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return []
    deltas = (c.get("delta") for c in choices if isinstance(c, dict))
    return [d for d in deltas if isinstance(d, dict)]


def _error_message(exc: groq.APIStatusError) -> str:
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else exc.message


def _tool_event(call: _PendingCall, context: AgentContext) -> LlmEvent | None:
    """The TOOL_CALL for an assembled call, or None for one we did not offer."""
    raw = "".join(call.arguments)
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        log.warning("groq tool call %s had malformed arguments (%d chars)", call.name, len(raw))
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    if call.name == "end_call":
        return LlmEvent(LlmEventKind.TOOL_CALL, tool="end_call", arguments=arguments)
    if call.name == "transfer_call" and context.transfer_number:
        # Only ever the configured number, whatever the model wrote (toll fraud by prompt).
        if arguments.get("to") != context.transfer_number:
            log.warning("groq transfer_call target replaced by the configured number")
        to = {"to": context.transfer_number}
        return LlmEvent(LlmEventKind.TOOL_CALL, tool="transfer_call", arguments=to)
    log.warning("groq called a tool that was not offered: %s", call.name)
    return None
