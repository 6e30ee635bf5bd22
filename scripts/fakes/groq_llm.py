"""A local Groq chat-completions server that streams scripted replies over SSE.

Serves `POST /openai/v1/chat/completions` with `stream: true` as Groq does: HTTP/1.1
chunked `text/event-stream` of `data: {chunk}\\n\\n` events ending with `data: [DONE]\\n\\n`;
the first chunk carries `delta.role`, the last one `finish_reason` and `x_groq.usage`.
Every request needs `Authorization: Bearer <api key>` and is recorded.

Replies are taken from a queue (`script(...)`), else from `responder(body)`:

* `TextReply(text, latency_ms, token_interval_ms)`: the text in small token pieces;
* `ToolCallReply(name, arguments, fragments)`: a tool call, its arguments split in pieces;
* `ErrorReply(status, message, retry_after)`: an error status with Groq's error body.

A reply can also break after n tokens: an SSE error event (`error_after_tokens`) or a dropped
connection (`cut_after_tokens`). A client that closes the stream early is noticed (`aborted`,
`wait_aborted()`); `connections` counts TCP connections (keep-alive reuses one).
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson

from scripts.fakes.http_fake import FakeHTTPServer, Recorded

PATH = "/openai/v1/chat/completions"
DEFAULT_API_KEY = "gsk_test"  # the fake's own credential, not a secret
DEFAULT_TEXT = "Sure, I can help with that. What else would you like to know?"
_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]+|\s+")


@dataclass(frozen=True)
class TextReply:
    """A streamed text answer; times in milliseconds."""

    text: str = DEFAULT_TEXT
    latency_ms: float = 0.0  # before the first token
    token_interval_ms: float = 0.0  # between tokens
    finish_reason: str = "stop"
    error_after_tokens: int | None = None  # then an SSE error event, as Groq sends
    cut_after_tokens: int | None = None  # then the connection drops mid-response


@dataclass(frozen=True)
class ToolCallReply:
    """A streamed tool call; `arguments` is sent verbatim (it may be malformed JSON)."""

    name: str
    arguments: str = "{}"
    text: str = ""  # spoken before the call
    fragments: int = 3
    latency_ms: float = 0.0
    token_interval_ms: float = 0.0
    error_after_tokens: int | None = None
    cut_after_tokens: int | None = None


@dataclass(frozen=True)
class ErrorReply:
    """An error status with Groq's `{"error": {...}}` body."""

    status: int
    message: str = "scripted error"
    retry_after: str | None = None
    code: str | None = None


Reply = TextReply | ToolCallReply | ErrorReply


def split_tokens(text: str) -> list[str]:
    """Token-like pieces: a word or punctuation run with its leading space."""
    return _TOKEN.findall(text)


class FakeGroqLlm:
    """The server; `start()` it, point `Groq(base_url=fake.url)` at it, `stop()` it."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        responder: Callable[[dict[str, Any]], Reply] | None = None,
    ) -> None:
        self.api_key = api_key
        self.responder = responder or (lambda body: TextReply())
        self.requests: list[Recorded] = []
        self.aborted = 0
        self.connections = 0
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._abort = threading.Condition(self._lock)
        self._server = FakeHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """The base URL for the groq SDK (it appends /openai/v1/...)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.05)  # a prompt stop(): tests start many

    def start(self) -> FakeGroqLlm:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self._queue.extend(replies)

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat requests received so far."""
        with self._lock:
            return [r.json() for r in self.requests if r.path == PATH]

    def wait_aborted(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until `count` streams were cut short by their client."""
        with self._abort:
            return self._abort.wait_for(lambda: self.aborted >= count, timeout)

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _next_reply(self, recorded: Recorded) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
        return self.responder(recorded.json() or {})

    def _note_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def _note_abort(self) -> None:
        with self._abort:
            self.aborted += 1
            self._abort.notify_all()


def start_fake_groq_llm(
    api_key: str = DEFAULT_API_KEY,
    responder: Callable[[dict[str, Any]], Reply] | None = None,
) -> FakeGroqLlm:
    """A started fake Groq server."""
    return FakeGroqLlm(api_key, responder).start()


class _ClientGone(Exception):
    pass


class _Cut(Exception):
    pass


_ERROR_EVENT = {"error": {"message": "scripted stream failure", "type": "internal_server_error"}}


def _chunks(reply: TextReply | ToolCallReply, model: str) -> Iterator[tuple[float, dict[str, Any]]]:
    """(seconds to wait first, chunk) pairs for a reply."""
    chunk_id, started = f"chatcmpl-{uuid.uuid4()}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": started,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [choice],
            "x_groq": {"id": f"req_{chunk_id[-12:]}", **extra},
        }

    interval = reply.token_interval_ms / 1000
    yield reply.latency_ms / 1000, chunk({"role": "assistant", "content": ""})
    pieces = split_tokens(reply.text)
    for n, piece in enumerate(pieces):
        if n == reply.error_after_tokens:
            yield interval, _ERROR_EVENT
            return
        if n == reply.cut_after_tokens:
            raise _Cut
        yield interval, chunk({"content": piece})
    finish = "stop"
    if isinstance(reply, ToolCallReply):
        finish = "tool_calls"
        for i, fragment in enumerate(_fragments(reply.arguments, reply.fragments)):
            yield interval, chunk({"tool_calls": [_tool_delta(reply, i, fragment)]})
    else:
        finish = reply.finish_reason
    usage = _usage(len(pieces))
    yield interval, chunk({}, finish, usage=usage)


def _fragments(arguments: str, count: int) -> list[str]:
    size = max(1, -(-len(arguments) // max(1, count)))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _tool_delta(reply: ToolCallReply, i: int, fragment: str) -> dict[str, Any]:
    if i:
        return {"index": 0, "function": {"arguments": fragment}}
    return {
        "index": 0,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": reply.name, "arguments": fragment},
    }


def _usage(completion_tokens: int) -> dict[str, Any]:
    return {
        "queue_time": 0.01,
        "prompt_tokens": 100,
        "prompt_time": 0.01,
        "completion_tokens": completion_tokens,
        "completion_time": 0.02,
        "total_tokens": 100 + completion_tokens,
        "total_time": 0.03,
    }


def _error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "internal_server_error"
    return {"error": {"message": message, "type": kind, "code": code}}


def _handler(fake: FakeGroqLlm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Small SSE writes must leave at once, as from Groq: Nagle would hold them ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fake._note_connection()

        def handle(self) -> None:
            # A client may close mid-response or between requests: not an error here.
            with contextlib.suppress(ConnectionError):
                super().handle()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            recorded = Recorded(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            fake._record(recorded)
            if recorded.headers.get("authorization") != f"Bearer {fake.api_key}":
                self._json(401, _error_body(401, "Invalid API Key", "invalid_api_key"))
                return
            if self.path != PATH:
                self._json(404, _error_body(404, f"unknown path {self.path}", None))
                return
            reply = fake._next_reply(recorded)
            if isinstance(reply, ErrorReply):
                extra = {"Retry-After": reply.retry_after} if reply.retry_after else {}
                self._json(
                    reply.status, _error_body(reply.status, reply.message, reply.code), extra
                )
                return
            self._stream(reply, str((recorded.json() or {}).get("model", "")))

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _stream(self, reply: TextReply | ToolCallReply, model: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for wait, chunk in _chunks(reply, model):
                    self._pause(wait)
                    self._event(orjson.dumps(chunk).decode())
                self._event("[DONE]")
                self._write(b"0\r\n\r\n")
            except _ClientGone:
                fake._note_abort()
                self.close_connection = True
            except _Cut:
                self.close_connection = True

        def _pause(self, seconds: float) -> None:
            if seconds > 0:
                time.sleep(seconds)
            if _peer_closed(self.connection):
                raise _ClientGone

        def _event(self, data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            self._write(b"%x\r\n%s\r\n" % (len(payload), payload))

        def _write(self, data: bytes) -> None:
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError as exc:
                raise _ClientGone from exc

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    return Handler


def _peer_closed(conn: socket.socket) -> bool:
    # Mid-response, a readable socket means EOF: clients do not pipeline requests.
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
