"""Cartesia TTS over the SDK's synchronous websocket client (cartesia 4.2.0).

One websocket per provider instance (create one `CartesiaTts` per call and `close()` it at
hang-up), one context per turn: pieces go out with `continue: true`, `end()` sends an empty
transcript with `continue: false`, and audio comes back as raw μ-law at 8 kHz, so nothing
is re-encoded here.

Each input goes out through the SDK connection's `send()` as the SDK's own
`GenerationRequest` model, which pydantic validates and serialises in Rust. The SDK's
`WebSocketContext.push` builds a dict instead, which `send()` first walks through the SDK's
type transform in Python: ~220-250 µs an input here, against 11-18 µs, ~5 inputs a reply.

Receiving does not use `WebSocketContext.receive()`, which makes whichever context is
reading the router and blocks in `recv()`: a cancelled turn could not return until the
server spoke again, and two turns reading at once would trip websockets' one-reader rule.
Instead whatever reads the socket (`deliver_messages`: in the voice process the read
ticker's pump, elsewhere websockets' own reader) routes every event by `context_id` to its
turn, which hands the audio to the turn's sink right there (no queue and no second greenlet
per chunk); `play()` only waits for the turn's end.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from cartesia import Cartesia
from cartesia.types.generation_request import GenerationRequest
from cartesia.types.websocket_client_event import CancelContextRequest
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from shared.providers.messages import deliver_messages, delivered_by_pump, json_object
from shared.providers.tls import client_context
from shared.realtime import checkpoint
from shared.resilience import ProviderUnavailable, guard

if TYPE_CHECKING:
    from cartesia.lib._tts import TTSResourceConnection
    from cartesia.types.websocket_connection_options import WebsocketConnectionOptions

    from shared.config import Settings

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.cartesia.ai"
MODEL_ID = "sonic-3"
DEFAULT_VOICE_ID = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"  # the SDK's own fallback voice
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}
YIELD_EVERY = 4  # messages of one burst the reader handles before it lets other calls run
BURST_GAP_S = 0.001  # a message handled this soon after the last came in the same read

# The SDK's request models are completed lazily, on their first validation, and pydantic
# then reads its caller's frames (sys._getframe) for their namespace: from the reply
# greenlet's shallow stack, compiled (shared/native.py), that raised ValueError and every
# call fell back to the local voice; interpreted, it cost the process's first turn ~1.2 ms.
# Completed here, at import, instead.
GenerationRequest.model_rebuild()
CancelContextRequest.model_rebuild()


class CartesiaTtsError(Exception):
    """Cartesia ended a turn with an error, went silent, or the connection dropped."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def websocket_url(http_url: str) -> str:
    """The ws(s):// form of an http(s):// base URL."""
    scheme, _, rest = http_url.partition("://")
    return ("wss" if scheme == "https" else "ws") + "://" + rest


class Burst:
    """When the reader should yield: Cartesia sends a sentence's audio faster than real
    time, so many messages are often read at once, and without a yield the reader would
    handle them all (~100 µs each under load) while every other call waits. Under gevent a
    yield lets the hub run in between (on plain threads it is a no-op). Only every
    `YIELD_EVERY` messages of a burst, not every one, and never for a message that came on
    its own: a yield is a round trip through the hub (3 % of the voice worker at 100 calls
    when it was every message), and counted across bursts it made 18 % of the readers'
    runs at 200 calls, each a message that had come alone."""

    def __init__(self) -> None:
        self._last = -math.inf
        self._run = 0  # messages handled in this burst so far

    def handled(self, now: float) -> bool:
        """A message has been handled at `now` (monotonic); True: yield before the next."""
        self._run = self._run + 1 if now - self._last < BURST_GAP_S else 1
        self._last = now
        return self._run % YIELD_EVERY == 0


class _Connection:
    """One open websocket, whose messages websockets' reader hands to their turns."""

    def __init__(self, sdk: TTSResourceConnection) -> None:
        self.sdk = sdk
        # websockets' sync connection under the SDK's: its messages come to `_on_message`
        # in its own reader (shared/providers/messages.py), not through `recv_bytes()`.
        self._websocket = sdk._connection
        self._open = True
        self._turns: dict[str, Callable[[dict[str, Any] | CartesiaTtsError], None]] = {}
        self._burst = Burst()
        deliver_messages(self._websocket, self._on_message, self._on_end)

    @property
    def alive(self) -> bool:
        """Open, as far as we know: not closed by us, not ended (and never sent on once
        websockets has seen it close, which would make the SDK reconnect under us)."""
        return self._open and self._websocket.state is State.OPEN

    def register(
        self, context_id: str, on_event: Callable[[dict[str, Any] | CartesiaTtsError], None]
    ) -> None:
        """`on_event` gets the context's events (and connection failures) in the reader."""
        self._turns[context_id] = on_event

    def forget(self, context_id: str) -> None:
        self._turns.pop(context_id, None)

    def close(self) -> None:
        self._open = False
        try:
            self.sdk.close()
        except Exception:
            log.debug("closing the Cartesia websocket failed", exc_info=True)
        # The SDK's connection and its manager refer to each other (the manager is how the
        # SDK would reconnect, which `alive` keeps it from ever doing here): a cycle that
        # only a full collection would free, with the websocket behind it
        # (web/voice/gc_policy.py).
        self.sdk._manager = None

    def _on_message(self, raw: bytes, text: bool) -> None:
        # Decoded here, not by the SDK's `parse_event`: its model of every audio chunk is
        # built in pure Python (22 µs a chunk with `.audio`, against 7 µs for orjson and
        # base64; ~800 chunks a second at 120 calls).
        event = json_object(raw, "Cartesia")
        if event is None:
            return
        self._route(event)
        checkpoint()
        # In the read ticker's pump a burst ends with the read: no yield there.
        if self._burst.handled(time.monotonic()) and not delivered_by_pump():
            time.sleep(0)

    def _on_end(self, reason: BaseException) -> None:
        """The connection ended (a drop, Cartesia's close or ours) or a handler failed:
        every turn still running fails."""
        if isinstance(reason, ConnectionClosed):
            code = reason.rcvd.code if reason.rcvd else "no close frame"
            message = f"Cartesia connection closed ({code})"
        else:
            log.error("Cartesia reader failed", exc_info=reason)
            message = f"Cartesia connection failed: {type(reason).__name__}"
        if self._open:  # not closed by us
            log.warning("%s", message)
        self._open = False
        for on_event in list(self._turns.values()):
            on_event(CartesiaTtsError(message))
        self._turns.clear()

    def _route(self, event: dict[str, Any]) -> None:
        """Hand `event` (a decoded message of the server's) to its context's turn."""
        context_id = event.get("context_id")
        if context_id is None:
            if event.get("type") == "error":  # not about one context: about all
                for on_event in list(self._turns.values()):
                    on_event(event)
        elif (turn := self._turns.get(context_id)) is not None:
            turn(event)
        # else: a cancelled or finished context's late events


class CartesiaTurn:
    """One agent turn: one Cartesia context on the call's connection. Its events arrive in
    the connection's reader (`_on_event`); `play()` waits for the end in the caller's."""

    def __init__(self, connection: _Connection, request: dict[str, Any], timeout: float) -> None:
        self._connection = connection
        self._request = request  # every input's fields but transcript and continue
        self._id: str = request["context_id"]
        self._timeout = timeout
        self._awaiting_since: float | None = None  # set while a reply is owed
        self._ended = self._cancelled = self._finished = False
        self._sink: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []  # audio that came before play() gave a sink
        self._failure: CartesiaTtsError | None = None
        self._over = threading.Event()  # done, failed or cancelled
        self._sink_lock = threading.Lock()  # the sink handover: no chunk lost or reordered
        connection.register(self._id, self._on_event)

    @property
    def context_id(self) -> str:
        return self._id

    def push(self, text: str) -> None:
        """Send the next piece (`continue: true`). A failure is raised from `play()`."""
        if text and not (self._ended or self._cancelled or self._finished):
            self._send(lambda: self._connection.sdk.send(self._input(text, more=True)))

    def end(self) -> None:
        """Send the empty closing input (`continue: false`)."""
        if not (self._ended or self._cancelled or self._finished):
            self._ended = True
            self._send(lambda: self._connection.sdk.send(self._input("", more=False)))

    def play(self, sink: Callable[[bytes], None]) -> None:
        """Hand the decoded μ-law chunks to `sink` (from the reader) until `done` or
        `cancel()`; raises `CartesiaTtsError` on a server error, a dropped connection, or
        no reply within the timeout."""
        try:
            with self._sink_lock:
                self._sink = sink
                for chunk in self._early:
                    self._to_sink(chunk)
                self._early.clear()
            # Woken by the end, else at the stall deadline (later if events moved it on).
            while not self._over.wait(self._until_stalled()):
                if self._until_stalled() <= 0:
                    raise CartesiaTtsError(f"no reply from Cartesia in {self._timeout:.1f}s")
            if self._failure is not None and not self._cancelled:
                raise self._failure
        finally:
            with self._sink_lock:
                self._sink = None
            self._finished = True
            self._connection.forget(self._id)

    def cancel(self) -> None:
        """Send `cancel` for the context and end `play()` at once. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._connection.forget(self._id)
        self._over.set()
        if not self._finished and self._connection.alive:
            try:
                self._connection.sdk.send(CancelContextRequest(context_id=self._id, cancel=True))
            except Exception:
                log.debug("sending cancel to Cartesia failed", exc_info=True)

    def _input(self, transcript: str, *, more: bool) -> GenerationRequest:
        """The next input of this turn's context (`more`: `continue`)."""
        return GenerationRequest.model_validate(
            {**self._request, "transcript": transcript, "continue": more}
        )

    def _until_stalled(self) -> float:
        """Seconds until the owed reply is late (the whole timeout while none is owed)."""
        since = self._awaiting_since
        return self._timeout if since is None else since + self._timeout - time.monotonic()

    def _on_event(self, event: dict[str, Any] | CartesiaTtsError) -> None:
        """In the reader: audio to the sink at once, the end or a failure to `play()`."""
        if self._cancelled or self._over.is_set():
            return
        # Once ended, `done` is owed: the clock restarts with every event.
        self._awaiting_since = time.monotonic() if self._ended else None
        if isinstance(event, CartesiaTtsError):
            self._fail(event)
            return
        kind = event.get("type")
        if kind == "error":
            self._fail(_error(event))
            return
        if kind == "chunk" and (data := event.get("data")):
            try:
                audio = base64.b64decode(data, validate=True)
            except (binascii.Error, TypeError):
                self._fail(CartesiaTtsError("Cartesia sent audio that is not base64"))
                return
            self._deliver(audio)
        if kind == "done" or (kind == "chunk" and event.get("done")):
            self._over.set()

    def _deliver(self, audio: bytes) -> None:
        """To the sink, or kept for it; a sink that raises fails this turn only, never the
        reader that every turn of the call shares."""
        with self._sink_lock:
            if self._sink is None:
                self._early.append(audio)
            else:
                self._to_sink(audio)

    def _to_sink(self, audio: bytes) -> None:
        """(holding the sink lock)"""
        assert self._sink is not None
        if self._failure is not None:
            return
        try:
            self._sink(audio)
        except Exception as exc:
            failure = CartesiaTtsError(f"the audio sink failed: {type(exc).__name__}")
            failure.__cause__ = exc
            self._fail(failure)

    def _fail(self, failure: CartesiaTtsError) -> None:
        if self._failure is None:
            self._failure = failure
        self._over.set()

    def _send(self, operation: Any) -> None:
        if self._awaiting_since is None:
            self._awaiting_since = time.monotonic()
        if not self._connection.alive:
            self._fail(CartesiaTtsError("Cartesia connection is closed"))
            return
        try:
            operation()
        except Exception as exc:
            failure = CartesiaTtsError(f"sending to Cartesia failed: {type(exc).__name__}")
            failure.__cause__ = exc
            self._fail(failure)


def _error(event: dict[str, Any]) -> CartesiaTtsError:
    status = event.get("status_code")
    status = status if isinstance(status, int) else None
    title, message = event.get("title") or "", event.get("message") or ""
    return CartesiaTtsError(f"Cartesia error {status}: {title} {message}".strip(), status)


@functools.lru_cache(maxsize=4)
def sdk_client(api_key: str, base_url: str) -> Cartesia:
    """One SDK client per process, shared by the calls: building one costs ~45 ms of CPU
    (its HTTP side's TLS context), which under gevent stalled every call in the process."""
    client = Cartesia(
        api_key=api_key, base_url=base_url, websocket_base_url=websocket_url(base_url)
    )
    # The SDK imports its TTS modules on first use: at start-up, not in a call.
    _ = client.tts
    return client


class CartesiaTts:
    """The Cartesia provider for one call: one websocket, opened by `warm_up()` or the
    first turn (through `guard("cartesia")`) and reopened if it drops between turns."""

    name = "cartesia"

    def __init__(
        self,
        settings: Settings,
        *,
        model_id: str = MODEL_ID,
        default_voice: str = DEFAULT_VOICE_ID,
        reply_timeout: float = 5.0,
    ) -> None:
        if not settings.cartesia_api_key:
            raise ValueError("CARTESIA_API_KEY is not set")
        self._client = sdk_client(settings.cartesia_api_key, settings.cartesia_url or DEFAULT_URL)
        self._secure = websocket_url(settings.cartesia_url or DEFAULT_URL).startswith("wss:")
        self._model_id = model_id
        self._default_voice = default_voice
        self._reply_timeout = reply_timeout
        self._connection: _Connection | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Open the websocket now, so the first turn does not pay for the handshake."""
        self._connected()

    def start_turn(self, voice: str | None, language: str) -> CartesiaTurn:
        """A new context. Raises `ProviderUnavailable` if no connection can be opened."""
        connection = self._connected()
        request = {
            "context_id": str(uuid.uuid4()),
            "model_id": self._model_id,
            "voice": {"mode": "id", "id": voice or self._default_voice},
            "output_format": OUTPUT_FORMAT,
            "language": language.partition("-")[0].lower(),
        }
        return CartesiaTurn(connection, request, self._reply_timeout)

    def close(self) -> None:
        """Close the websocket (call end); turns still running end with an error."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _connected(self) -> _Connection:
        with self._lock:
            if self._connection is None or not self._connection.alive:
                self._connection = _Connection(self._open())
            return self._connection

    def _open(self) -> TTSResourceConnection:
        try:
            return guard("cartesia").call(self._open_once)
        except ProviderUnavailable:
            raise
        except Exception as exc:  # permanent: a rejected key or version, a bad URL
            status = getattr(getattr(exc, "response", None), "status_code", None)
            reason = f"connect rejected ({status or type(exc).__name__})"
            raise ProviderUnavailable("cartesia", reason) from exc

    def _open_once(self, timeout: float) -> TTSResourceConnection:
        # legacy=True: the SDK calls websockets' connect() outside a `with`, which websockets
        # 17 still supports but warns about unless this (its documented opt-in) is passed.
        # compression=None: no permessage-deflate. Base64 μ-law barely compresses, and
        # inflating every audio message was ~2.5 % of the voice worker's CPU at 100 calls
        # (zlib plus websockets' extension code; docs/voice-benchmark-log.md).
        options: dict[str, Any] = {"open_timeout": timeout, "legacy": True, "compression": None}
        if self._secure:
            options["ssl"] = client_context()  # not a new TLS context per call
        return self._client.tts.websocket_connect(
            websocket_connection_options=cast("WebsocketConnectionOptions", options)
        ).enter()
