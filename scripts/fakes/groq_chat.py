"""Non-streaming Groq chat completions (OpenAI shape), for the sentiment provider's tests.

    POST /openai/v1/chat/completions   Authorization: Bearer <key>
 -> {"id", "object": "chat.completion", "created", "model",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": …},
                  "logprobs": null, "finish_reason": "stop"}], "usage", "x_groq"}

`sentiment_reply` builds one answer; `chat_route` serves them with HttpFake. The streaming
LLM fake is scripts/fakes/groq_llm.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from scripts.fakes.http_fake import Recorded, Reply, Route

PATH = "/openai/v1/chat/completions"
DEFAULT_KEY = "gsk_test"
_ids = itertools.count(1)


def sentiment_reply(
    content: str, model: str = "llama-3.1-8b-instant", latency_ms: float = 0.0
) -> Reply:
    """A chat.completion whose assistant message is `content` (e.g. '{"sentiment": 0.8}')."""
    n = next(_ids)
    body = {
        "id": f"chatcmpl-fake-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 60, "completion_tokens": 8, "total_tokens": 68},
        "system_fingerprint": "fp_fake",
        "x_groq": {"id": f"req_fake_{n}"},
    }
    return Reply(200, body, delay=latency_ms / 1000)


def groq_error(status: int, message: str, code: str) -> Reply:
    """An error in Groq's (OpenAI's) shape."""
    return Reply(
        status, {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    )


def chat_route(
    answer: Callable[[dict[str, Any]], str], api_key: str = DEFAULT_KEY, latency_ms: float = 0.0
) -> Route:
    """An HttpFake route: checks path and key, then replies with `answer(request_body)`."""

    def route(recorded: Recorded) -> Reply:
        if recorded.method != "POST" or recorded.path != PATH:
            return groq_error(
                404, f"Unknown request URL: {recorded.method} {recorded.path}", "unknown_url"
            )
        if recorded.headers.get("authorization") != f"Bearer {api_key}":
            return groq_error(401, "Invalid API Key", "invalid_api_key")
        body = recorded.json() or {}
        return sentiment_reply(answer(body), body.get("model", ""), latency_ms)

    return route
