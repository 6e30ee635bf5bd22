"""Deepgram live STT (Nova, `/v1/listen`) over deepgram-sdk 7.x's synchronous socket client.

One websocket per call, opened through `guard("deepgram")`. `send()` never waits: its
caller may be the read ticker's pump, which reads every call's media
(web/voice/read_ticker.py), and a send on this socket waits whenever its kernel buffer is
full (a stalled network), which must hold up this call's audio to Deepgram only. So each
message (5 to 25 a second) is written at once only when nothing is queued before it and
the socket takes it without waiting (`send_binary_now`, nearly always), else it goes to
the stream's sender worker, which waits as long as it must.

Audio per message (Deepgram takes 20-250 ms): `send_ms` (40) while the caller may be
speaking, `quiet_send_ms` (200) once the line has been quiet (RMS under `SPEECH_RMS`) for
`HANGOVER_MS`. A send through the SDK's websocket cost ~65 µs under load (framing, a
getrandom() for the mask, gevent's sendall; `send_binary` frames by hand with masks drawn
in bulk and saves about a quarter of it), a third of the voice worker's CPU at 100 calls
when every call sent 25 a second, and most of a call's time is the caller listening. The
first loud frame flushes at once, so speech reaches Deepgram no later than before, and the
hang-over outlasts endpointing and utterance-end. Deepgram ends a turn once it has
`endpointing` ms of silence after the last word (or `utterance_end_ms` without words), so
once the caller has been quiet for `PAUSE_MS`, and until `ENDPOINT_SLACK_MS` past
endpointing, each frame goes at once: the silence that ends a turn never waits up to 20 ms
for a second frame to fill its message (a shorter pause is inside a word or between words,
where batching delays nothing that matters; a later one is past endpointing, where only the
utterance-end fallback is left). A turn that has ended (speech_final or UtteranceEnd) ends
the hang-over there: the 40 ms messages after speech were 70 % of a call's sends in the
voice benchmark (docs/voice-benchmark-log.md). A keep-alive worker sends KeepAlive after
`keepalive_s` without audio. Deepgram's messages become SttEvents where they are read
(`deliver_messages`), so `on_event` runs there: in the voice process the read ticker's pump
(or, for what it hands back, websockets' reader greenlet), elsewhere websockets' reader
thread; it must never wait. The workers are `start_worker`s (greenlets in the voice process
too).

Turns: `is_final` results are FINAL segments; `speech_final` (endpointing) ends the turn,
or `UtteranceEnd` does when endpointing missed. A failure mid-stream (drop, `Error`) is
kept in `stream.failed` and passed to `on_error` once, so the call can fall back.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import websockets.sync.client
from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1 import client as listen_client
from websockets.exceptions import ConnectionClosed

from shared.background import start_worker
from shared.modules import with_names
from shared.providers.messages import (
    deliver_messages,
    json_object,
    nonblocking_writer,
    send_binary,
    send_binary_now,
)
from shared.providers.stt.base import SttEvent, SttEventKind
from shared.realtime import checkpoint
from shared.resilience import ProviderUnavailable, guard
from shared.voice.audio import ulaw_rms

if TYPE_CHECKING:
    from deepgram.listen.v1.socket_client import V1SocketClient

    from shared.config import Settings

log = logging.getLogger(__name__)

BYTES_PER_S = 8000  # μ-law, 8 kHz, mono
SEND_MS = 40  # audio per message while the caller may be speaking
QUIET_SEND_MS = 200  # ... and once the line is quiet
SPEECH_RMS = 200  # about -44 dBFS: telephone line noise is well under it, speech well over
HANGOVER_MS = 1500  # quiet this long (more than endpointing + utterance end): a quiet line
PAUSE_MS = 60  # quiet this long inside the hang-over: the caller may be done, no batching
ENDPOINT_SLACK_MS = 300  # ... until this long past endpointing (a soft last sound counts too)
CLOSE_WAIT_S = 3.0


class DeepgramStreamError(Exception):
    """Deepgram reported an error or ended the stream before we closed it."""


def _number(value: Any, default: float) -> float:
    """A time field of Deepgram's (seconds), or `default` where it is missing or not a
    number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def environment(url: str) -> DeepgramClientEnvironment:
    """All of the SDK's base URLs pointed at one server (DEEPGRAM_URL, e.g. a local fake)."""
    ws = url.rstrip("/")
    scheme, _, rest = ws.partition("://")
    http = ("https" if scheme == "wss" else "http") + "://" + rest
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


Connection = tuple[AbstractContextManager[Any], "V1SocketClient"]


class DeepgramStream:
    """One call's live transcription; see the module docstring."""

    def __init__(
        self,
        connection: Connection,
        on_event: Callable[[SttEvent], None],
        on_error: Callable[[BaseException], None] | None,
        keepalive_s: float,
        send_ms: int = SEND_MS,
        quiet_send_ms: int = QUIET_SEND_MS,
        endpointing_ms: int = 300,
    ) -> None:
        self.failed: BaseException | None = None
        self._context, self._socket = connection
        # The SDK's websocket (websockets' sync connection): audio is written and results
        # read on it directly, below the SDK's per-message layers (see `_on_message`,
        # shared/providers/messages.py).
        self._websocket = self._socket._websocket
        self._writer = nonblocking_writer(self._websocket.socket)
        self._on_event = on_event
        self._on_error = on_error
        self._keepalive_s = keepalive_s
        self._send_bytes = max(1, BYTES_PER_S * send_ms // 1000)
        self._quiet_send_bytes = max(self._send_bytes, BYTES_PER_S * quiet_send_ms // 1000)
        self._loud_until = 0  # byte count of audio up to which the line counts as live
        self._loud_at = 0  # byte count of audio at the end of the last loud frame
        self._pause = range(  # quiet bytes after speech in which each frame goes at once
            BYTES_PER_S * PAUSE_MS // 1000,
            BYTES_PER_S * (endpointing_ms + ENDPOINT_SLACK_MS) // 1000,
        )
        self._pending = bytearray()  # audio not sent yet: less than one message
        self._sent_at = time.monotonic()
        self._stopped = threading.Event()
        self._closing = False
        self._released = False
        self._lock = threading.Lock()
        self._received = 0  # audio bytes handed to send()
        self._received_at = time.monotonic()
        self._turn: list[str] = []
        self._turn_end_s = 0.0  # audio time of the turn's last word
        self._outbox: deque[bytes] = deque()  # messages for the sender worker
        self._outbox_ready = threading.Event()
        self._ended = threading.Event()  # the stream has ended (see `_on_end`)
        self._keepalive = start_worker(self._keepalive_loop, "deepgram-keepalive")
        deliver_messages(self._websocket, self._on_message, self._on_end)
        self._sender = start_worker(self._send_loop, "deepgram-sender")

    def send(self, pcmu: bytes) -> None:
        """Caller audio, sent in messages of `send_ms` (`quiet_send_ms` on a quiet line, see
        the module docstring); dropped after close() or a failure."""
        if self._closing or self.failed is not None or not pcmu:
            return
        quiet = self._received >= self._loud_until
        self._received += len(pcmu)
        self._received_at = time.monotonic()
        self._pending += pcmu
        if ulaw_rms(pcmu) >= SPEECH_RMS:
            self._loud_at = self._received
            self._loud_until = self._received + BYTES_PER_S * HANGOVER_MS // 1000
            if quiet:  # speech starts: no batching delay on its first frame
                self._send_pending()
                return
        elif not quiet and self._received - self._loud_at in self._pause:
            self._send_pending()  # a pause that may end the turn: Deepgram counts it now
            return
        limit = self._quiet_send_bytes if quiet else self._send_bytes
        if len(self._pending) >= limit:
            self._send_pending()

    def close(self) -> None:
        """Send what is queued and CloseStream, wait (bounded) for the last results (a turn
        still open ends with them), then close the socket. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._stopped.set()
        self._send_pending()
        self._outbox_ready.set()  # the sender ends once the queue is empty
        self._sender.join(CLOSE_WAIT_S)  # it sends what is queued, then ends
        if self.failed is None:
            self._send(self._socket.send_close_stream)
        self._ended.wait(CLOSE_WAIT_S)
        if self.failed is None and self._ended.is_set():
            self._end_turn(self._turn_end_s)
        self._release()

    # -- sending ---------------------------------------------------------------------
    def _send_pending(self) -> None:
        """Send what is pending: at once when nothing is queued before it and the socket
        takes it without waiting (`send_binary_now`), else through the sender worker."""
        if not self._pending:  # an empty message would mean "close" to Deepgram
            return
        message = bytes(self._pending)
        self._pending.clear()
        if (
            not self._outbox
            and self._writer is not None
            and self.failed is None
            and send_binary_now(self._websocket, message, self._writer)
        ):
            self._sent_at = time.monotonic()
            return
        self._outbox.append(message)
        self._outbox_ready.set()

    def _send_loop(self) -> None:
        """Send what `send()` queued, in order; end once stopped with nothing queued."""
        while True:
            self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox and self.failed is None:
                message = self._outbox.popleft()
                self._send(functools.partial(send_binary, self._websocket, message))
                checkpoint()
            if self._stopped.is_set() and (not self._outbox or self.failed is not None):
                return

    def _send(self, send: Callable[[], None]) -> None:
        try:
            send()
        except Exception as exc:
            self._fail(exc)
        else:
            self._sent_at = time.monotonic()

    def _keepalive_loop(self) -> None:
        """A KeepAlive whenever no audio went out for keepalive_s (Deepgram closes a
        stream after 10 s without data)."""
        while not self._stopped.wait(self._keepalive_s / 2):
            if time.monotonic() - self._sent_at >= self._keepalive_s and self.failed is None:
                self._send(self._socket.send_keep_alive)

    # -- receiving -------------------------------------------------------------------
    def _on_message(self, raw: bytes, text: bool) -> None:
        """Each message, in websockets' reader (`deliver_messages`). The SDK's socket client
        would build a model of every message (`construct_type` over the union of message
        types: ~200-250 µs a Results message with ten words, one object per word) where
        orjson takes ~5 µs; it has no raw receive, so its websocket's messages come here."""
        if text:  # JSON; binary messages carry nothing here
            self._handle(raw)
            checkpoint()

    def _on_end(self, reason: BaseException) -> None:
        """The stream ended: a drop, Deepgram's close, ours, or what `_handle` raised."""
        if isinstance(reason, ConnectionClosed) and not self._closing:
            error = DeepgramStreamError(f"Deepgram closed the stream ({reason})")
            error.__cause__, reason = reason, error
        self._fail(reason)
        self._ended.set()

    def _handle(self, raw: bytes) -> None:
        message = json_object(raw, "Deepgram")
        if message is None:
            return
        kind = message.get("type")
        if kind == "Results":
            self._on_results(message)
        elif kind == "SpeechStarted":
            self._emit(SttEvent(SttEventKind.SPEECH_STARTED, at=time.monotonic()))
        elif kind == "UtteranceEnd":
            self._end_turn(_number(message.get("last_word_end"), self._turn_end_s))
        elif kind == "Error":
            variant, description = message.get("variant"), message.get("description")
            raise DeepgramStreamError(f"{variant}: {description}")

    def _on_results(self, results: dict[str, Any]) -> None:
        channel = results.get("channel")
        alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
        best = alternatives[0] if isinstance(alternatives, list) and alternatives else {}
        best = best if isinstance(best, dict) else {}
        transcript = best.get("transcript")
        text = transcript.strip() if isinstance(transcript, str) else ""
        now = time.monotonic()
        if not results.get("is_final"):
            if text:
                self._emit(SttEvent(SttEventKind.INTERIM, " ".join([*self._turn, text]), now))
            return
        if text:
            words = best.get("words")
            last = words[-1] if isinstance(words, list) and words else None
            end = last.get("end") if isinstance(last, dict) else None
            audio_end = _number(results.get("start"), 0.0) + _number(results.get("duration"), 0.0)
            self._turn_end_s = _number(end, audio_end)
            self._turn.append(text)
            ended = self._monotonic_at(self._turn_end_s)
            self._emit(SttEvent(SttEventKind.FINAL, text, now, ended))
        if results.get("speech_final"):
            self._end_turn(self._turn_end_s)

    def _end_turn(self, last_word_end_s: float) -> None:
        if not self._turn:  # already ended by speech_final, or nothing was said
            return
        turn, self._turn = " ".join(self._turn), []
        self._loud_until = min(self._loud_until, self._received)  # quiet until speech again
        ended = self._monotonic_at(last_word_end_s)
        self._emit(SttEvent(SttEventKind.END_OF_TURN, turn, time.monotonic(), ended))

    def _monotonic_at(self, audio_s: float) -> float:
        """When the caller spoke audio time `audio_s`: audio arrives in real time, so
        count back from the newest bytes received."""
        behind = self._received / BYTES_PER_S - audio_s
        return min(time.monotonic(), self._received_at - max(0.0, behind))

    def _emit(self, event: SttEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("STT event handler failed on %s", event.kind)

    # -- failure and clean-up --------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._closing or self.failed is not None:
                return
            self.failed = exc
        log.warning("Deepgram stream failed: %r", exc)
        self._stopped.set()
        self._outbox_ready.set()  # the sender ends
        self._release()
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                log.exception("STT error handler failed")

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            self._context.__exit__(None, None, None)
        except Exception as exc:  # the socket is gone either way
            log.debug("closing the Deepgram socket: %r", exc)


class DeepgramStt:
    """SttProvider over Deepgram's live API; DEEPGRAM_URL points it at another server."""

    name = "deepgram"

    def __init__(
        self,
        settings: Settings,
        *,
        model: str = "nova-3",
        endpointing_ms: int = 300,
        utterance_end_ms: int = 1000,
        keepalive_s: float = 5.0,
    ) -> None:
        if not settings.deepgram_api_key:
            raise ValueError("DEEPGRAM_API_KEY is not set")
        options: dict[str, Any] = {"api_key": settings.deepgram_api_key}
        if settings.deepgram_url:
            options["environment"] = environment(settings.deepgram_url)
        self._client = DeepgramClient(**options)
        # The module whose connect() `listen.v1.connect` calls.
        without_deflate = with_names(websockets.sync.client, connect=_connect_without_deflate)
        setattr(listen_client, "websockets_sync_client", without_deflate)  # noqa: B010  # not exported
        # The SDK imports its live-listen modules on first use (~24 ms, every call in the
        # process stalled): at start-up instead.
        _ = self._client.listen.v1
        self.model = model
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.keepalive_s = keepalive_s

    def warm_up(self) -> None:
        """Nothing to load: a socket is opened per call."""

    def open(
        self,
        language: str,
        on_event: Callable[[SttEvent], None],
        *,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> DeepgramStream:
        """Open the call's websocket. Raises `ProviderUnavailable` if it cannot."""
        try:
            connection = guard("deepgram").call(lambda timeout: self._connect(language, timeout))
        except ProviderUnavailable:
            raise
        except Exception as exc:  # permanent: a rejected key, a bad query or URL
            # The SDK wraps only legacy websockets' status errors; the sync client raises
            # websockets' InvalidStatus, whose status is on `.response`.
            response = getattr(exc, "response", None)
            status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
            reason = f"connect rejected ({status or type(exc).__name__})"
            raise ProviderUnavailable("deepgram", reason) from exc
        return DeepgramStream(
            connection, on_event, on_error, self.keepalive_s, endpointing_ms=self.endpointing_ms
        )

    def _connect(self, language: str, timeout: float) -> Connection:
        context = self._client.listen.v1.connect(
            model=self.model,
            language=language,
            encoding="mulaw",
            sample_rate=BYTES_PER_S,
            channels=1,
            interim_results=True,
            endpointing=self.endpointing_ms,
            utterance_end_ms=self.utterance_end_ms,
            vad_events=True,
            smart_format=True,
        )
        with _deadline(timeout):
            socket = context.__enter__()
        return context, socket


def _connect_without_deflate(*args: Any, **kwargs: Any) -> Any:
    """websockets' sync `connect` as the Deepgram SDK's live-listen client calls it, except
    that it offers no permessage-deflate (websockets offers it by default; the SDK has no
    option for it). Why: compressed, every 40-200 ms audio message would go through zlib
    on the voice worker's core, for μ-law audio that barely compresses (Cartesia's
    inflated audio was ~2.5 % of the worker's CPU at 100 calls before its
    `compression=None`, docs/voice-benchmark-log.md). Whether Deepgram accepts the offer
    is not documented; not making it costs a few bytes of JSON results."""
    kwargs.setdefault("compression", None)
    return websockets.sync.client.connect(*args, **kwargs)


def _deadline(seconds: float) -> AbstractContextManager[Any]:
    """Bounds the handshake under gevent; the SDK passes no timeout to websockets (whose
    own open_timeout, 10 s, applies on plain threads)."""
    from contextlib import nullcontext

    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        return nullcontext()
    import gevent

    return gevent.Timeout(seconds, TimeoutError(f"Deepgram handshake over {seconds}s"))
