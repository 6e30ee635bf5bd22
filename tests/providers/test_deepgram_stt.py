"""DeepgramStt through the real deepgram-sdk against the protocol-faithful fake server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from scripts.fakes.deepgram_live import DeepgramLiveFake, Utterance
from shared.config import load_settings
from shared.providers.stt.base import SttEvent, SttEventKind
from shared.providers.stt.deepgram import DeepgramStream, DeepgramStreamError, DeepgramStt
from shared.resilience import ProviderUnavailable, guard
from tests.conftest import alive, no_automatic_collections, poll_until, run_fresh

FRAME = 160  # 20 ms of 8 kHz μ-law
SILENCE, SPEECH = b"\xff" * FRAME, b"\x00\x80" * (FRAME // 2)  # μ-law silence, a loud frame
QUESTION = "When are you open on Saturday?"


@pytest.fixture
def fake() -> Iterator[DeepgramLiveFake]:
    server = DeepgramLiveFake(script=[Utterance(QUESTION, start_s=0.3, end_s=1.5)]).start()
    yield server
    server.stop()


def provider(url: str, key: str = "test-key", **options: float) -> DeepgramStt:
    settings = load_settings(deepgram_api_key=key, deepgram_url=url)
    return DeepgramStt(settings, **options)  # type: ignore[arg-type]


class Events:
    def __init__(self) -> None:
        self.items: list[SttEvent] = []
        self.turn_ended = threading.Event()

    def __call__(self, event: SttEvent) -> None:
        self.items.append(event)
        if event.kind is SttEventKind.END_OF_TURN:
            self.turn_ended.set()

    def of(self, kind: SttEventKind) -> list[SttEvent]:
        return [e for e in self.items if e.kind is kind]


def speak(fake: DeepgramLiveFake, frames: list[bytes]) -> tuple[DeepgramStream, Events]:
    """A stream opened on `fake` with `frames` sent to it, as fast as it takes them."""
    events = Events()
    stream = provider(fake.url).open("en-US", events)
    for frame in frames:
        stream.send(frame)
    return stream, events


def send_audio(stream: object, seconds: float, *, real_time: bool = False) -> list[float]:
    """μ-law silence in 20 ms frames; returns when each frame was sent."""
    sent = []
    start = time.monotonic()
    for i in range(round(seconds * 50)):
        if real_time:
            time.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
        stream.send(SILENCE)  # type: ignore[attr-defined]
        sent.append(time.monotonic())
    return sent


def test_the_stream_opens_with_the_token_and_the_query_nova_3_needs(
    fake: DeepgramLiveFake,
) -> None:
    stream = provider(fake.url).open("en-US", Events())
    stream.close()

    (session,) = fake.sessions
    assert session.path == "/v1/listen"
    assert session.headers["Authorization"] == "Token test-key"
    # No permessage-deflate offered: zlib on every audio message otherwise (a provider
    # that accepts it), for μ-law that barely compresses.
    assert "Sec-WebSocket-Extensions" not in session.headers
    assert session.query == {
        "model": "nova-3",
        "language": "en-US",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "300",
        "utterance_end_ms": "1000",
        "vad_events": "true",
        "smart_format": "true",
    }


def test_audio_arrives_intact_and_in_order_in_40_ms_messages(fake: DeepgramLiveFake) -> None:
    audio = os.urandom(FRAME * 101)  # noise: loud all along
    stream = provider(fake.url).open("en-US", Events())
    for i in range(0, len(audio), FRAME):
        stream.send(audio[i : i + FRAME])
    stream.close()

    (session,) = fake.sessions
    assert bytes(session.audio) == audio
    sizes = [size for _, size in session.frames]
    # The first loud frame goes at once, then 40 ms messages.
    assert sizes == [FRAME] + [2 * FRAME] * 50
    assert session.control_types() == ["CloseStream"]


def test_a_quiet_line_goes_in_200_ms_messages_and_speech_at_once(
    fake: DeepgramLiveFake,
) -> None:
    frames = [SILENCE] * 25 + [SPEECH] * 21 + [SILENCE] * 80
    stream, _ = speak(fake, frames)
    stream.close()

    (session,) = fake.sessions
    assert bytes(session.audio) == b"".join(frames)
    sizes = [size for _, size in session.frames]
    assert sizes == (
        [10 * FRAME] * 2  # quiet: 200 ms messages
        + [6 * FRAME]  # the first word flushes the quiet audio before it, at once
        + [2 * FRAME] * 10  # speech: 40 ms
        + [2 * FRAME]  # a pause of 40 ms: still inside speech, for all we know
        + [FRAME] * 27  # 60 ms quiet, to 300 ms past endpointing (300 ms): a frame at once
        + [2 * FRAME] * 23  # the rest of the 1.5 s hang-over (utterance end): 40 ms
        + [5 * FRAME]  # quiet again: the rest waits for 200 ms, or here the close
    )


def test_the_silence_that_ends_a_turn_reaches_deepgram_frame_by_frame(
    fake: DeepgramLiveFake,
) -> None:
    # The speech ends at 1.5 s; endpointing's 300 ms of silence end with the 90th frame,
    # which in 40 ms messages would wait for a 91st (the 61 loud frames leave it unpaired).
    stream, events = speak(fake, [SILENCE] * 14 + [SPEECH] * 61 + [SILENCE] * 15)
    try:
        assert events.turn_ended.wait(2)
    finally:
        stream.close()
    assert len(fake.sessions[0].audio) == 90 * FRAME


def test_results_become_speech_started_interim_final_and_end_of_turn(
    fake: DeepgramLiveFake,
) -> None:
    events = Events()
    stream = provider(fake.url).open("en-US", events)
    sent = send_audio(stream, 1.9, real_time=True)
    assert events.turn_ended.wait(2)
    stream.close()

    kinds = [e.kind for e in events.items]
    assert kinds == [
        SttEventKind.SPEECH_STARTED,
        SttEventKind.INTERIM,
        SttEventKind.FINAL,
        SttEventKind.END_OF_TURN,
    ]
    interim, final, end = events.items[1:]
    assert interim.text == "When are you"
    assert final.text == end.text == QUESTION
    # The last word ends at 1.5 s of audio: the 75th frame.
    assert end.speech_ended_at is not None
    assert abs(end.speech_ended_at - sent[74]) < 0.05
    assert end.speech_ended_at <= end.at


def test_utterance_end_ends_the_turn_when_endpointing_missed_it() -> None:
    script = [
        Utterance("Hi.", start_s=0.2, end_s=0.6),
        Utterance("I need a plumber.", start_s=2.0, end_s=3.0, endpointed=False),
    ]
    server = DeepgramLiveFake(script=script).start()
    try:
        events = Events()
        stream = provider(server.url).open("en-US", events)
        send_audio(stream, 4.2)
        deadline = time.monotonic() + 2
        while len(events.of(SttEventKind.END_OF_TURN)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        stream.close()
    finally:
        server.stop()

    assert [e.text for e in events.of(SttEventKind.FINAL)] == ["Hi.", "I need a plumber."]
    assert [e.text for e in events.of(SttEventKind.END_OF_TURN)] == ["Hi.", "I need a plumber."]
    sent = server.sessions[0].sent
    assert [m["type"] for m in sent].count("UtteranceEnd") == 1


def test_keepalive_text_frames_go_out_while_no_audio_flows(fake: DeepgramLiveFake) -> None:
    stream = provider(fake.url, keepalive_s=0.1).open("en-US", Events())
    time.sleep(0.35)
    send_audio(stream, 0.1)
    stream.close()

    (session,) = fake.sessions
    types = session.control_types()
    assert types[-1] == "CloseStream"
    assert types.count("KeepAlive") >= 2
    assert set(types[:-1]) == {"KeepAlive"}


def test_close_sends_close_stream_and_delivers_the_results_still_pending() -> None:
    server = DeepgramLiveFake(
        script=[Utterance(QUESTION, start_s=0.3, end_s=1.5)], latency_ms=150
    ).start()
    try:
        events = Events()
        stream = provider(server.url).open("en-US", events)
        send_audio(stream, 1.2)  # the caller is cut off mid-sentence
        stream.close()
        stream.close()
        stream.send(SILENCE)
    finally:
        server.stop()

    (session,) = server.sessions
    assert session.closed_by_client
    assert session.control_types() == ["CloseStream"]
    assert len(session.audio) == 1.2 * 8000
    assert [e.text for e in events.of(SttEventKind.END_OF_TURN)] == [QUESTION]


def test_a_closed_stream_is_freed_by_reference_counting(fake: DeepgramLiveFake) -> None:
    """The voice worker runs no full collection while calls are up: a stream left in a
    reference cycle would keep its socket and buffers until one ran."""
    with no_automatic_collections():
        events = Events()
        stream = provider(fake.url).open("en-US", events, on_error=events)
        send_audio(stream, 0.3)
        stream.close()
        assert alive(DeepgramStream) == 1
        del stream
        # websockets' reader (a thread here) lets go of it once it has seen the close
        assert poll_until(lambda: alive(DeepgramStream) == 0), (
            "the closed stream is still referenced"
        )


def test_nothing_listening_is_provider_unavailable_after_the_guards_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setattr(guard("deepgram"), "sleep", lambda seconds: None)

    with pytest.raises(ProviderUnavailable) as caught:
        provider(f"ws://127.0.0.1:{port}").open("en-US", Events())

    assert caught.value.provider == "deepgram"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_a_rejected_key_is_provider_unavailable_without_retrying(
    fake: DeepgramLiveFake,
) -> None:
    with pytest.raises(ProviderUnavailable, match=r"connect rejected \(401\)"):
        provider(fake.url, key="wrong").open("en-US", Events())
    assert fake.sessions == []


def test_a_socket_dropped_mid_stream_calls_on_error_once() -> None:
    server = DeepgramLiveFake(drop_after_bytes=FRAME * 10).start()
    errors: list[BaseException] = []
    failed = threading.Event()
    try:
        stream = provider(server.url).open(
            "en-US", Events(), on_error=lambda exc: (errors.append(exc), failed.set())
        )
        send_audio(stream, 0.4)
        assert failed.wait(3)
        send_audio(stream, 0.2)  # ignored now
        stream.close()
    finally:
        server.stop()

    assert len(errors) == 1
    assert stream.failed is errors[0]
    assert len(server.sessions[0].audio) <= FRAME * 20


def test_a_deepgram_error_message_calls_on_error_with_its_variant() -> None:
    server = DeepgramLiveFake(error_after_bytes=FRAME * 5).start()
    errors: list[BaseException] = []
    failed = threading.Event()
    try:
        stream = provider(server.url).open(
            "en-US", Events(), on_error=lambda exc: (errors.append(exc), failed.set())
        )
        send_audio(stream, 0.2)
        assert failed.wait(3)
        stream.close()
    finally:
        server.stop()

    (error,) = errors
    assert isinstance(error, DeepgramStreamError)
    assert "NET-0001" in str(error)


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import gevent, threading, time
from scripts.fakes.deepgram_live import DeepgramLiveFake, Utterance
from shared.config import load_settings
from shared.providers.stt.deepgram import DeepgramStt

fake = DeepgramLiveFake(script=[Utterance("Hello there.", start_s=0.1, end_s=0.5)]).start()
settings = load_settings(deepgram_api_key="test-key", deepgram_url=fake.url)
events, where = [], set()
def on_event(event):
    events.append(event.kind.value)
    where.add(gevent.getcurrent() is not gevent.get_hub())
stream = DeepgramStt(settings).open("en-US", on_event)
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(60)])
for _ in range(50):
    stream.send(b"\\xff" * 160)
    gevent.sleep(0.005)
stream.close()
ticker.join()
fake.stop()
print(events, where, len(ticks))
"""


def test_under_gevent_the_stream_runs_on_greenlets_without_blocking_the_hub() -> None:
    assert run_fresh(textwrap.dedent(GEVENT_SCRIPT)).strip().splitlines()[-1] == (
        "['speech_started', 'interim', 'final', 'end_of_turn'] {True} 60"
    )


STALLED_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import gevent, time
from scripts.fakes.deepgram_live import DeepgramLiveFake
from shared.config import load_settings
from shared.providers.stt.deepgram import DeepgramStt

fake = DeepgramLiveFake(stall_after_bytes=1).start()
settings = load_settings(deepgram_api_key="test-key", deepgram_url=fake.url)
stream = DeepgramStt(settings).open("en-US", lambda event: None)
chunk = bytes(range(256)) * 256  # 64 KiB of loud audio: one message per send()
sends = 300  # 19 MiB: far more than the socket buffers and the server's queue hold
try:
    with gevent.Timeout(5):
        for _ in range(sends):
            stream.send(chunk)
        gevent.sleep(0.5)  # the sender worker sends until the buffers are full
    print("send() returned; the server had", len(fake.sessions[0].audio) < len(chunk) * sends)
except gevent.Timeout:
    print("send() waited on the stalled socket")
fake.resume()
stream.close()
fake.stop()
print("delivered in order", bytes(fake.sessions[0].audio) == chunk * sends)
"""


def test_send_never_waits_on_a_stalled_socket_and_the_audio_follows_in_order() -> None:
    # The caller may be the read ticker's pump, which reads every call's media: a stalled
    # network towards Deepgram must hold up only this stream's sender worker.
    assert run_fresh(textwrap.dedent(STALLED_SCRIPT)).strip().splitlines()[-2:] == [
        "send() returned; the server had True",
        "delivered in order True",
    ]


def test_once_the_turn_has_ended_the_quiet_line_goes_in_200_ms_messages(
    fake: DeepgramLiveFake,
) -> None:
    utterance = [SILENCE] * 15 + [SPEECH] * 60 + [SILENCE] * 20  # speech: 0.3-1.5 s
    stream, events = speak(fake, utterance)
    assert events.turn_ended.wait(3)  # endpointed 300 ms after the speech, at 1.8 s
    # The utterance's last messages may still be on their way when the turn's end arrives.
    assert poll_until(lambda: len(fake.sessions[0].audio) >= len(utterance) * FRAME)
    ended = time.monotonic()
    for _ in range(50):  # 1 s of silence, well inside the 1.5 s hang-over
        stream.send(SILENCE)
    stream.close()

    (session,) = fake.sessions
    after = [size for at, size in session.frames if at > ended]
    # Not 25 messages of 40 ms: the hang-over ended with the turn.
    assert len(after) <= 6
    assert all(size == 10 * FRAME for size in after[:-1])


class ScriptedSocket:
    """The SDK's socket client, reduced to what DeepgramStream uses: its websocket, here a
    real one to a server that sends `messages` at once (before the stream takes the
    connection's messages over) and then closes, and the sends."""

    def __init__(self, messages: list[str | bytes]) -> None:
        from websockets.sync.client import connect
        from websockets.sync.server import ServerConnection, serve

        def script(ws: ServerConnection) -> None:
            for message in messages:
                ws.send(message)
            ws.close()

        self._server = serve(script, "127.0.0.1", 0, compression=None)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        port = self._server.socket.getsockname()[1]
        self._websocket = connect(f"ws://127.0.0.1:{port}", compression=None, legacy=True)
        time.sleep(0.2)  # everything has arrived: queued in websockets' assembler

    def stop(self) -> None:
        self._server.shutdown()

    def send_media(self, message: bytes) -> None:
        """Audio goes nowhere."""

    def send_keep_alive(self) -> None:
        """Nothing to keep alive."""

    def send_close_stream(self) -> None:
        """Nothing to close."""


def test_malformed_messages_are_skipped_and_the_stream_goes_on() -> None:
    final = {
        "type": "Results",
        "is_final": True,
        "speech_final": True,
        "start": 1.0,
        "duration": 0.5,
        "channel": {"alternatives": [{"transcript": " Hello there. ", "words": [{"end": "?"}]}]},
    }
    messages: list[str | bytes] = [
        "not JSON",
        "[1, 2]",
        '{"type": "Results"}',  # no channel, not final
        '{"type": "Results", "is_final": true, "channel": {"alternatives": "?"}}',
        '{"type": "UtteranceEnd"}',  # no turn open: nothing to end
        b"\x00\x01",  # binary: nothing for us
        json.dumps(final),
    ]
    events, errors, failed = Events(), [], threading.Event()
    socket = ScriptedSocket(messages)
    DeepgramStream(
        (contextlib.nullcontext(), socket),  # type: ignore[arg-type]
        events,
        lambda exc: (errors.append(exc), failed.set()),
        keepalive_s=60,
    )
    assert failed.wait(3)  # the scripted messages ran out: Deepgram "closed the stream"
    socket.stop()
    (error,) = errors
    assert "closed the stream" in str(error)
    kinds = [(e.kind, e.text) for e in events.items]
    # Every malformed message was skipped; the good one made a turn, its end time from
    # start + duration since its last word's `end` is not a number.
    assert kinds == [
        (SttEventKind.FINAL, "Hello there."),
        (SttEventKind.END_OF_TURN, "Hello there."),
    ]
