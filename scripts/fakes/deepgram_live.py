"""A fake Deepgram live STT server (`/v1/listen`, protocol v1 "Nova") for tests, benchmarks
and scripts/simulate-call. It runs on one asyncio loop thread (`ws_server.WsServerThread`).

It checks `Authorization: Token <key>` (401 otherwise) and the query (400 without `model`,
or with `encoding` but no `sample_rate`), records each session's audio and control messages,
and answers from a script driven by the audio received, the way Deepgram does:

    fake = DeepgramLiveFake(script=[Utterance("When are you open?", start_s=0.3, end_s=1.8)])

sends `SpeechStarted` once `start_s` of audio has arrived (if `vad_events`), an interim
`Results` half-way (if `interim_results`), and the final `Results` once `endpointing` ms of
audio past `end_s` have arrived, with `speech_final: true`; with `endpointed=False` the
final has `speech_final: false` and an `UtteranceEnd` follows `utterance_end_ms` later.
`latency_ms` delays every reply. `CloseStream` flushes what is pending (a begun utterance
gets its final, without `speech_final`), then sends `Metadata` and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from scripts.fakes.ws_server import WsServerThread

MODEL_INFO = {"name": "2-general-nova", "version": "2024-01-09.29447", "arch": "nova-3"}


@dataclass
class Utterance:
    """What the caller says, in seconds of the session's audio."""

    transcript: str
    start_s: float
    end_s: float
    endpointed: bool = True  # False: no speech_final; an UtteranceEnd ends the turn


@dataclass
class Session:
    """What one client connection sent."""

    path: str
    query: dict[str, str]
    headers: Headers
    audio: bytearray = field(default_factory=bytearray)
    frames: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes)
    controls: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed_by_client: bool = False

    def control_types(self) -> list[str]:
        return [str(message.get("type")) for _, message in self.controls]


class DeepgramLiveFake:
    """Start with `start()`; point `DeepgramClientEnvironment(production=fake.url)` at it."""

    def __init__(
        self,
        api_key: str = "test-key",
        script: list[Utterance] | None = None,
        latency_ms: float = 0.0,
        drop_after_bytes: int | None = None,
        error_after_bytes: int | None = None,
        stall_after_bytes: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.script = script or []
        self.latency_ms = latency_ms
        self.drop_after_bytes = drop_after_bytes
        self.error_after_bytes = error_after_bytes
        # Stop reading after this much audio until `resume()`: the client's sends then
        # fill the socket's buffers and wait, as on a stalled network.
        self.stall_after_bytes = stall_after_bytes
        self._resumed = asyncio.Event()
        self.sessions: list[Session] = []
        self._server = WsServerThread(self._handle, process_request=self._check, compression=None)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that serves every connection."""
        return self._server.loop

    def start(self) -> DeepgramLiveFake:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def resume(self) -> None:
        """Read again after `stall_after_bytes`."""

        async def resume() -> None:
            self._resumed.set()

        self._server.call(resume())

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = dict(parse_qsl(parts.query))
        if parts.path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid credentials\n")
        if "model" not in query or ("encoding" in query and "sample_rate" not in query):
            return connection.respond(HTTPStatus.BAD_REQUEST, "Bad query\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        parts = urlsplit(connection.request.path)
        session = Session(parts.path, dict(parse_qsl(parts.query)), connection.request.headers)
        self.sessions.append(session)
        await _Responder(self, connection, session).run()


@dataclass(frozen=True)
class _Close:
    """In the outbox: close the websocket with this code once what is before it is sent."""

    code: int = 1000
    reason: str = ""


class _Responder:
    """Plays the script for one connection. Replies go through one outbox, in order; those
    `latency_ms` late are put there by a loop timer."""

    def __init__(self, fake: DeepgramLiveFake, ws: ServerConnection, session: Session) -> None:
        self.fake = fake
        self.ws = ws
        self.session = session
        self.q = session.query
        self.bytes_per_s = int(self.q.get("sample_rate", "8000")) * (
            2 if self.q.get("encoding") == "linear16" else 1
        )
        self.request_id = str(uuid.uuid4())
        self.pending = [_Step(u, self) for u in fake.script]
        self.outbox: asyncio.Queue[list[dict[str, Any]] | _Close | None] = asyncio.Queue()
        self.delayed = 0  # replies waiting for their `latency_ms`
        self.idle = asyncio.Event()  # set while none is waiting
        self.idle.set()

    async def run(self) -> None:
        sender = asyncio.create_task(self._sender())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    if not self._audio(message):
                        break
                    stall = self.fake.stall_after_bytes
                    if stall is not None and len(self.session.audio) >= stall:
                        await self.fake._resumed.wait()
                elif await self._control(json.loads(message)):
                    break
        except ConnectionClosed:
            pass
        finally:
            self.outbox.put_nowait(None)
            await sender

    def _audio(self, data: bytes) -> bool:
        s = self.session
        s.audio.extend(data)
        s.frames.append((time.monotonic(), len(data)))
        if self.fake.drop_after_bytes is not None and len(s.audio) >= self.fake.drop_after_bytes:
            assert self.ws.transport is not None
            self.ws.transport.abort()  # no close frame: the client sees a dropped connection
            return False
        if self.fake.error_after_bytes is not None and len(s.audio) >= self.fake.error_after_bytes:
            error = {"type": "Error", "variant": "NET-0001", "description": "fake failure"}
            self._send([error])
            self.outbox.put_nowait(_Close(1011, "fake failure"))
            return False
        seconds = len(s.audio) / self.bytes_per_s
        for step in self.pending:
            self._send(step.due(seconds), delay=True)
        return True

    async def _control(self, message: dict[str, Any]) -> bool:
        self.session.controls.append((time.monotonic(), message))
        if message.get("type") != "CloseStream":
            return False
        self.session.closed_by_client = True
        seconds = len(self.session.audio) / self.bytes_per_s
        with contextlib.suppress(TimeoutError):  # replies still "processing" go out first
            await asyncio.wait_for(self.idle.wait(), 5)
        for step in self.pending:
            self._send(step.flush(seconds))
        metadata = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "0" * 64,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "duration": seconds,
            "channels": 1,
        }
        self._send([metadata])
        self.outbox.put_nowait(_Close())
        return True

    def _send(self, messages: list[dict[str, Any]], delay: bool = False) -> None:
        if not messages:
            return
        if delay and self.fake.latency_ms:
            self.delayed += 1
            self.idle.clear()
            asyncio.get_running_loop().call_later(
                self.fake.latency_ms / 1000, self._deliver, messages
            )
            return
        self.outbox.put_nowait(messages)

    def _deliver(self, messages: list[dict[str, Any]]) -> None:
        self.outbox.put_nowait(messages)
        self.delayed -= 1
        if not self.delayed:
            self.idle.set()

    async def _sender(self) -> None:
        """Sends the outbox in order until None; a client gone first ends it too."""
        with contextlib.suppress(ConnectionClosed):
            while (item := await self.outbox.get()) is not None:
                if isinstance(item, _Close):
                    await self.ws.close(item.code, item.reason)
                    return
                for message in item:
                    self.session.sent.append(message)
                    await self.ws.send(orjson.dumps(message).decode())

    def results(
        self, u: Utterance, text: str, *, is_final: bool, speech_final: bool
    ) -> dict[str, Any]:
        words = text.split()
        step = (u.end_s - u.start_s) / max(1, len(words))
        items = [
            {
                "word": w.strip(".,?!").lower(),
                "start": round(u.start_s + i * step, 3),
                "end": round(u.start_s + (i + 1) * step, 3),
                "confidence": 0.98,
                "punctuated_word": w,
            }
            for i, w in enumerate(words)
        ]
        alternative = {"transcript": text, "confidence": 0.98, "words": items}
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(u.end_s - u.start_s, 3),
            "start": round(u.start_s, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": False,
            "channel": {"alternatives": [alternative]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": MODEL_INFO,
                "model_uuid": "1dbdfb4d-85b2-4659-9831-16b3c76229aa",
            },
        }


class _Step:
    """One utterance's replies, each sent once enough audio has arrived."""

    def __init__(self, u: Utterance, r: _Responder) -> None:
        q = r.q
        endpointing = q.get("endpointing", "10")
        pause = 0.01 if endpointing == "true" else int(endpointing) / 1000
        ue = q.get("utterance_end_ms")
        self.utterance = u
        self.final = r.results(u, u.transcript, is_final=True, speech_final=False)
        self.replies: list[tuple[float, dict[str, Any]]] = []
        if q.get("vad_events") == "true":
            speech = {"type": "SpeechStarted", "channel": [0, 1], "timestamp": u.start_s}
            self.replies.append((u.start_s, speech))
        if q.get("interim_results") == "true":
            words = u.transcript.split()
            interim = " ".join(words[: max(1, len(words) // 2)])
            middle = (u.start_s + u.end_s) / 2
            self.replies.append((middle, r.results(u, interim, is_final=False, speech_final=False)))
        final = r.results(u, u.transcript, is_final=True, speech_final=u.endpointed)
        self.replies.append((u.end_s + (pause if u.endpointed else 0.1), final))
        if ue is not None and not u.endpointed:
            end = {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": u.end_s}
            self.replies.append((u.end_s + int(ue) / 1000, end))

    def due(self, seconds: float) -> list[dict[str, Any]]:
        ready = [message for at, message in self.replies if at <= seconds]
        self.replies = [(at, message) for at, message in self.replies if at > seconds]
        return ready

    def flush(self, seconds: float) -> list[dict[str, Any]]:
        """At CloseStream: the final (without speech_final) of an utterance already begun."""
        if seconds < self.utterance.start_s or not any(m.get("is_final") for _, m in self.replies):
            return []
        self.replies = []
        return [{**self.final, "from_finalize": True}]
