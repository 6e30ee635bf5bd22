"""A local Cartesia TTS websocket (`/tts/websocket`) that records every message it gets.

Speaks the real protocol (docs.cartesia.ai tts-websocket, SDK cartesia 4.2.0):

* Handshake: `Cartesia-Version` (header, or `cartesia_version` in the query) and a key as
  `Authorization: Bearer <key>`, `X-API-Key: <key>` or `api_key`/`access_token` in the query;
  otherwise HTTP 400/401. `reject_next(status)` fails the next handshakes with `status`.
* Generation requests, multiplexed by `context_id`: each transcript is answered with `chunk`
  messages of base64 μ-law 8 kHz audio, `BYTES_PER_CHAR` per character (a 437 Hz tone whose
  phase runs on across the context, so `tone(n)` is a context's whole audio), `chunk_ms`
  each, paced at `pace` times real time after `latency_ms` before a context's first chunk.
  `flush: true` answers `flush_done`; `continue: false` (the default) ends the context with
  `done` once its audio is out. `{"context_id", "cancel": true}` stops a context silently.
* Errors as the service sends them (`type: error`, `done: true`): missing fields, a format
  the fake cannot make (anything but raw pcm_mulaw 8000), fields changed within a context,
  input after a context ended, and `fail_next_context(...)` for tests.
* `drop_connections()` closes every open websocket (code 1011), as a restart would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from scripts.fakes.ws_server import WsServerThread
from shared.voice.audio import pcm16_to_ulaw

WS_PATH = "/tts/websocket"
DEFAULT_API_KEY = "test-cartesia-key"
BYTES_PER_CHAR = 480  # 60 ms of 8 kHz μ-law per transcript character
SAMPLE_RATE = 8000
TONE_HZ = 437.0  # not a divisor of any chunk length: chunks differ, so order is checkable
REQUIRED = ("context_id", "model_id", "transcript", "voice", "output_format")
PER_INPUT = {"transcript", "continue", "flush", "duration"}  # may differ within a context


def tone(n_bytes: int, start: int = 0) -> bytes:
    """Bytes `start`..`start + n_bytes` of a context's audio (μ-law, one byte a sample)."""
    index = np.arange(start, start + n_bytes)
    pcm = (np.sin(2 * np.pi * TONE_HZ * index / SAMPLE_RATE) * 8000).astype("<i2")
    return pcm16_to_ulaw(pcm.tobytes())


@functools.lru_cache(maxsize=4096)
def _chunk_data(n_bytes: int, start: int) -> str:
    """A chunk's `data` (base64 of `tone`): cached, since every call of a benchmark speaks
    the same answers, and the fake shares the load generators' core with the phones."""
    return base64.b64encode(tone(n_bytes, start)).decode()


@dataclass
class Received:
    """One message from a client, with the connection it came on."""

    connection: int
    message: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Handshake:
    connection: int
    path: str
    headers: dict[str, str]


class _Context:
    """One context's audio stream, produced by a task of its own in input order."""

    def __init__(self, fake: FakeCartesiaTts, ws: ServerConnection, context_id: str) -> None:
        self.fake, self.ws, self.id = fake, ws, context_id
        self.fields: dict[str, Any] = {}
        self.ended = False
        self.flushes = 0
        self.work: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.sent = 0  # audio bytes so far: where the tone continues
        self.task = asyncio.create_task(self._run(), name=f"ctx-{context_id}")

    def cancel(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        first = True
        with contextlib.suppress(ConnectionClosed):
            while True:
                kind, value = await self.work.get()
                if kind == "audio" and first:
                    first = False
                    await asyncio.sleep(self.fake.latency_ms / 1000)
                if kind == "audio":
                    await self._stream(value)
                elif kind == "flush":
                    await self._send(type="flush_done", done=False, flush_done=True, flush_id=value)
                else:
                    await self._send(type="done", done=True, status_code=200)
                    return

    async def _stream(self, n_bytes: int) -> None:
        step = self.fake.chunk_ms * SAMPLE_RATE // 1000
        for offset in range(0, n_bytes, step):
            size = min(step, n_bytes - offset)
            data = _chunk_data(size, self.sent)
            self.sent += size
            await self._send(type="chunk", data=data, done=False, status_code=206, step_time=1.0)
            await asyncio.sleep(size / SAMPLE_RATE * self.fake.pace)

    async def _send(self, **message: Any) -> None:
        await self.ws.send(orjson.dumps({"context_id": self.id, **message}).decode())


class FakeCartesiaTts:
    """The fake server; `url`/`ws_url` for `Cartesia(base_url=, websocket_base_url=)`."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        latency_ms: float = 0.0,
        chunk_ms: int = 100,
        pace: float = 0.5,
    ) -> None:
        self.api_key = api_key
        self.latency_ms = latency_ms
        self.chunk_ms = chunk_ms
        self.pace = pace  # seconds spent per second of audio: 0 = at once, 1 = real time
        self.messages: list[Received] = []
        self.handshakes: list[Handshake] = []
        self._rejects: list[int] = []
        self._failures: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._numbers: dict[object, int] = {}  # websockets' connection id → 1, 2, ...
        self._open: set[ServerConnection] = set()  # touched on the server's loop only
        self._lock = threading.Lock()  # what tests read and script from their own thread
        self._server = WsServerThread(self._handle, process_request=self._check_handshake)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that serves every connection."""
        return self._server.loop

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def start(self) -> FakeCartesiaTts:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reject_next(self, status: int, count: int = 1) -> None:
        """Answer the next `count` handshakes with HTTP `status`."""
        with self._lock:
            self._rejects.extend([status] * count)

    def fail_next_context(
        self, status_code: int = 400, title: str = "Invalid request", message: str = "bad"
    ) -> None:
        """Answer the next new context's first input with an `error` message."""
        with self._lock:
            self._failures.append({"status_code": status_code, "title": title, "message": message})

    def drop_connections(self) -> None:
        """Close every open connection (code 1011), as a server restart would."""

        async def drop() -> None:
            for ws in list(self._open):
                await ws.close(1011, "fake dropped the connection")

        self._server.call(drop())

    def received(self, context_id: str | None = None) -> list[dict[str, Any]]:
        """Messages received so far, optionally of one context, in order."""
        with self._lock:
            return [
                r.message
                for r in self.messages
                if context_id is None or r.message.get("context_id") == context_id
            ]

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        with self._lock:
            number = self._numbers[ws.id] = next(self._ids)
            self.handshakes.append(Handshake(number, request.path, headers))
            reject = self._rejects.pop(0) if self._rejects else None
        if reject is not None:
            return ws.respond(reject, "rejected by the fake\n")
        if parts.path != WS_PATH:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if not (headers.get("cartesia-version") or query.get("cartesia_version")):
            return ws.respond(HTTPStatus.BAD_REQUEST, "Cartesia-Version is required\n")
        if self._key(headers, query) != self.api_key:
            return ws.respond(HTTPStatus.UNAUTHORIZED, "invalid API key\n")
        return None

    @staticmethod
    def _key(headers: dict[str, str], query: dict[str, str]) -> str | None:
        bearer = headers.get("authorization", "")
        if bearer.startswith("Bearer "):
            return bearer.removeprefix("Bearer ")
        return headers.get("x-api-key") or query.get("api_key") or query.get("access_token")

    async def _handle(self, ws: ServerConnection) -> None:
        contexts: dict[str, _Context] = {}
        self._open.add(ws)
        try:
            async for raw in ws:
                await self._on_message(ws, contexts, raw)
        except ConnectionClosed:
            pass
        finally:
            self._open.discard(ws)
            for context in contexts.values():
                context.cancel()

    async def _on_message(
        self, ws: ServerConnection, contexts: dict[str, _Context], raw: str | bytes
    ) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return await _error(ws, None, 400, "Invalid JSON", "the message is not JSON")
        with self._lock:
            self.messages.append(Received(self._numbers[ws.id], message))
        context_id = message.get("context_id")
        if message.get("cancel"):
            context = contexts.pop(context_id, None)
            if context is not None:
                context.cancel()
            return None
        problem = self._problem(contexts.get(context_id), message)
        if problem:
            return await _error(ws, context_id, 400, "Invalid request", problem)
        with self._lock:
            failure = (
                self._failures.pop(0) if context_id not in contexts and self._failures else None
            )
        if failure:
            return await _error(ws, context_id, **failure)
        if context_id not in contexts:
            contexts[context_id] = _Context(self, ws, context_id)
            contexts[context_id].fields = _fixed_fields(message)
        _accept(contexts[context_id], message)
        return None

    @staticmethod
    def _problem(context: _Context | None, message: dict[str, Any]) -> str | None:
        missing = [name for name in REQUIRED if name not in message]
        if missing:
            return f"missing fields: {', '.join(missing)}"
        wanted = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": SAMPLE_RATE}
        if message["output_format"] != wanted:
            return "the fake only makes raw pcm_mulaw at 8000 Hz"
        if context is None:
            return None
        if context.ended:
            return "context has already ended"
        if _fixed_fields(message) != context.fields:
            return "all fields but transcript, continue and flush must stay the same"
        return None


def _fixed_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in PER_INPUT}


def _accept(context: _Context, message: dict[str, Any]) -> None:
    if message["transcript"]:
        context.work.put_nowait(("audio", len(message["transcript"]) * BYTES_PER_CHAR))
    if message.get("flush"):
        context.flushes += 1
        context.work.put_nowait(("flush", context.flushes))
    if not message.get("continue", False):
        context.ended = True
        context.work.put_nowait(("done", 0))


async def _error(
    ws: ServerConnection, context_id: str | None, status_code: int, title: str, message: str
) -> None:
    body = {"type": "error", "done": True, "status_code": status_code, "title": title}
    body |= {"message": message, "error_code": "invalid_request", "request_id": "fake"}
    if context_id is not None:
        body["context_id"] = context_id
    await ws.send(json.dumps(body))


def start_fake_cartesia(api_key: str = DEFAULT_API_KEY, **options: Any) -> FakeCartesiaTts:
    """A started fake; `options` are FakeCartesiaTts's latency_ms, chunk_ms and pace."""
    return FakeCartesiaTts(api_key, **options).start()
