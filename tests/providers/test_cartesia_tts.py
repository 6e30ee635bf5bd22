"""Cartesia TTS: the real SDK's sync websocket client against the local fake Cartesia."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from scripts.fakes.cartesia_tts import (
    BYTES_PER_CHAR,
    DEFAULT_API_KEY,
    FakeCartesiaTts,
    start_fake_cartesia,
    tone,
)
from shared.config import Settings
from shared.providers.tts.cartesia import (
    BURST_GAP_S,
    YIELD_EVERY,
    Burst,
    CartesiaTts,
    CartesiaTtsError,
)
from shared.resilience import ProviderUnavailable, guard
from tests.conftest import alive, no_automatic_collections, poll_until, run_fresh
from tests.providers.playing import Player, collect

FORMAT = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}


@pytest.fixture(autouse=True)
def quiet_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No real waits between connect attempts; a clean breaker for the next test."""
    monkeypatch.setattr(guard("cartesia"), "sleep", lambda seconds: None)
    yield
    if guard("cartesia").breaker.current_state != "closed":
        guard("cartesia").breaker.close()


@pytest.fixture
def fake() -> Iterator[FakeCartesiaTts]:
    server = start_fake_cartesia(pace=0.0, chunk_ms=20)
    yield server
    server.stop()


def provider(url: str, key: str = DEFAULT_API_KEY, **options: float) -> CartesiaTts:
    settings = Settings(_env_file=None, cartesia_api_key=key, cartesia_url=url)  # type: ignore[call-arg]
    return CartesiaTts(settings, **options)  # type: ignore[arg-type]


@pytest.fixture
def tts(fake: FakeCartesiaTts) -> Iterator[CartesiaTts]:
    client = provider(fake.url)
    yield client
    client.close()


def speak(tts: CartesiaTts, *pieces: str, voice: str | None = None) -> tuple[str, bytes]:
    turn = tts.start_turn(voice, "en")
    for piece in pieces:
        turn.push(piece)
    turn.end()
    return turn.context_id, collect(turn)


def test_a_turn_is_one_context_of_continued_inputs_closed_by_an_empty_one(
    fake: FakeCartesiaTts, tts: CartesiaTts
) -> None:
    context_id, _ = speak(tts, "Hello there. ", "How can I help?", voice="voice-123")

    sent = fake.received()
    assert [m["context_id"] for m in sent] == [context_id] * 3
    assert [m["transcript"] for m in sent] == ["Hello there. ", "How can I help?", ""]
    assert [m["continue"] for m in sent] == [True, True, False]
    for message in sent:
        assert message["model_id"] == "sonic-3"
        assert message["voice"] == {"mode": "id", "id": "voice-123"}
        assert message["output_format"] == FORMAT
        assert message["language"] == "en"
    handshake = fake.handshakes[0]
    assert handshake.path == "/tts/websocket"
    assert handshake.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert handshake.headers["cartesia-version"]
    assert "sec-websocket-extensions" not in handshake.headers  # no deflate of the audio


def test_the_audio_comes_back_intact_and_in_order(tts: CartesiaTts) -> None:
    pieces = ("Your appointment is on Tuesday. ", "See you then!")
    _, audio = speak(tts, *pieces)

    # 20 ms chunks of a tone whose phase runs on: any loss or reordering changes the bytes.
    assert audio == tone(len("".join(pieces)) * BYTES_PER_CHAR)


def test_two_turns_share_one_connection_with_different_contexts(
    fake: FakeCartesiaTts, tts: CartesiaTts
) -> None:
    first, first_audio = speak(tts, "One.")
    second, second_audio = speak(tts, "Two, three.")

    assert first != second
    assert len(fake.handshakes) == 1
    assert {r.connection for r in fake.messages} == {1}
    assert first_audio == tone(len("One.") * BYTES_PER_CHAR)
    assert second_audio == tone(len("Two, three.") * BYTES_PER_CHAR)


def test_an_unknown_voice_falls_back_to_the_default_voice_id(
    fake: FakeCartesiaTts, tts: CartesiaTts
) -> None:
    speak(tts, "Hi.")
    assert fake.received()[0]["voice"] == {"mode": "id", "id": tts._default_voice}


def test_cancel_sends_a_cancel_and_ends_the_audio_at_once(fake: FakeCartesiaTts) -> None:
    fake.pace = 1.0  # real time: 60 ms of audio per character is still streaming
    tts = provider(fake.url)
    turn = tts.start_turn(None, "en")
    turn.push("A long answer that would take several seconds to say. ")
    player = Player(turn)
    assert player.first.wait(5)
    started = time.perf_counter()
    turn.cancel()
    assert player.join(1)
    elapsed = time.perf_counter() - started
    played = len(player.chunks)
    turn.cancel()

    assert elapsed < 0.1
    assert player.error is None
    time.sleep(0.2)  # the server was still sending: none of it reaches the sink
    assert len(player.chunks) == played
    assert poll_until(
        lambda: fake.received()[-1] == {"context_id": turn.context_id, "cancel": True}
    )
    fake.pace = 0.0
    _, audio_after = speak(tts, "Next.")  # the cancelled context's leftovers do not leak
    assert audio_after == tone(len("Next.") * BYTES_PER_CHAR)
    tts.close()


def test_a_server_error_ends_the_turn_with_an_exception_from_play(
    fake: FakeCartesiaTts, tts: CartesiaTts
) -> None:
    fake.fail_next_context(status_code=400, title="Invalid voice", message="voice not found")
    turn = tts.start_turn("no-such-voice", "en")
    turn.push("Hello.")

    with pytest.raises(CartesiaTtsError, match="Invalid voice") as raised:
        collect(turn)
    assert raised.value.status_code == 400
    _, audio = speak(tts, "Still here.")  # the connection survives a context's error
    assert audio == tone(len("Still here.") * BYTES_PER_CHAR)


def test_a_sink_that_fails_ends_its_own_turn_only(fake: FakeCartesiaTts, tts: CartesiaTts) -> None:
    def broken(chunk: bytes) -> None:
        raise RuntimeError("playout gone")

    turn = tts.start_turn(None, "en")
    turn.push("Hello.")
    turn.end()
    with pytest.raises(CartesiaTtsError, match="sink failed"):
        turn.play(broken)
    _, audio = speak(tts, "Still here.")  # the shared reader and connection live on
    assert audio == tone(len("Still here.") * BYTES_PER_CHAR)
    assert len(fake.handshakes) == 1


def test_a_dropped_connection_fails_the_turn_and_the_next_turn_reconnects(
    fake: FakeCartesiaTts, tts: CartesiaTts
) -> None:
    fake.pace = 1.0
    turn = tts.start_turn(None, "en")
    turn.push("A long answer that would take several seconds to say. ")
    player = Player(turn)
    assert player.first.wait(5)
    fake.drop_connections()

    assert player.join(5)
    assert isinstance(player.error, CartesiaTtsError)
    assert "connection closed" in str(player.error)
    fake.pace = 0.0
    _, audio_after = speak(tts, "Again.")
    assert audio_after == tone(len("Again.") * BYTES_PER_CHAR)
    assert len(fake.handshakes) == 2


def test_a_server_that_goes_silent_times_out(fake: FakeCartesiaTts) -> None:
    fake.latency_ms = 2000
    tts = provider(fake.url, reply_timeout=0.3)
    turn = tts.start_turn(None, "en")
    turn.push("Hello.")

    with pytest.raises(CartesiaTtsError, match="no reply"):
        collect(turn)
    tts.close()


def test_a_closed_connection_is_freed_by_reference_counting(fake: FakeCartesiaTts) -> None:
    """The voice worker runs no full collection while calls are up: a connection left in a
    reference cycle (the SDK's and its manager's, ours and websockets') would keep its
    socket and buffers until one ran."""
    with no_automatic_collections():
        tts = provider(fake.url)
        speak(tts, "Hello there.")
        connection = type(tts._connection)
        assert alive(connection) == 1
        tts.close()
        assert poll_until(lambda: alive(connection) == 0), (
            "the closed connection is still referenced"
        )


def test_an_unreachable_server_is_provider_unavailable_after_retries() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    tts = provider(url)

    # The live-call policy: two tries, then the loop falls back to Piper.
    with pytest.raises(ProviderUnavailable, match="2 attempts failed"):
        tts.start_turn(None, "en")


def test_a_rejected_key_is_provider_unavailable_at_once(fake: FakeCartesiaTts) -> None:
    tts = provider(fake.url, key="wrong-key")

    with pytest.raises(ProviderUnavailable, match="401"):
        tts.start_turn(None, "en")
    assert len(fake.handshakes) == 1  # a permanent error is not retried


def test_a_busy_server_is_retried_then_connects(fake: FakeCartesiaTts, tts: CartesiaTts) -> None:
    fake.reject_next(503)
    _, audio = speak(tts, "Hi.")
    assert audio == tone(len("Hi.") * BYTES_PER_CHAR)
    assert len(fake.handshakes) == 2


def test_overlapping_turns_each_get_their_own_audio(tts: CartesiaTts) -> None:
    results: dict[str, bytes] = {}

    def run(text: str) -> None:
        results[text] = speak(tts, text)[1]

    threads = [threading.Thread(target=run, args=(t,)) for t in ("First one.", "Second.")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {t: tone(len(t) * BYTES_PER_CHAR) for t in ("First one.", "Second.")}


def test_turns_work_under_gevent_monkey_patching() -> None:
    script = """
from gevent import monkey; monkey.patch_all()
import gevent
from scripts.fakes.cartesia_tts import start_fake_cartesia, tone, BYTES_PER_CHAR
from shared.config import Settings
from shared.providers.tts.cartesia import CartesiaTts
fake = start_fake_cartesia(pace=0.2, chunk_ms=20)
tts = CartesiaTts(Settings(_env_file=None, cartesia_api_key="test-cartesia-key", cartesia_url=fake.url))
tts.warm_up()
turn = tts.start_turn(None, "en"); turn.push("Hello there."); turn.end()
chunks = []; turn.play(chunks.append)
ok = b"".join(chunks) == tone(len("Hello there.") * BYTES_PER_CHAR)
turn = tts.start_turn(None, "en"); turn.push("A much longer sentence to cancel.")
chunks = []; player = gevent.spawn(turn.play, chunks.append)
while not chunks: gevent.sleep(0.01)
gevent.spawn(turn.cancel).join(); player.join(1)
played = len(chunks); gevent.sleep(0.2)
print(ok, player.dead and player.exception is None and len(chunks) == played)
tts.close(); fake.stop()
"""
    assert run_fresh(script).split() == ["True", "True"]


def test_the_sdks_request_models_are_complete_once_the_provider_is_imported() -> None:
    """Else the first turn completes them, and pydantic reads its caller's frames for
    that: from a reply greenlet's shallow (compiled) stack it raised, and every call fell
    back to the local voice."""
    script = """
import shared.providers.tts.cartesia
from cartesia.types.generation_request import GenerationRequest
from cartesia.types.websocket_client_event import CancelContextRequest
print(GenerationRequest.__pydantic_complete__, CancelContextRequest.__pydantic_complete__)
"""
    assert run_fresh(script).split() == ["True", "True"]


def test_the_fake_accepts_an_x_api_key_and_requires_a_version(fake: FakeCartesiaTts) -> None:
    url = fake.ws_url + "/tts/websocket"
    key = {"X-API-Key": DEFAULT_API_KEY}
    with pytest.raises(InvalidStatus, match="400"):
        connect(url, additional_headers=key, legacy=True)
    with connect(f"{url}?cartesia_version=2026-03-01", additional_headers=key, legacy=True) as ws:
        ws.send('{"context_id": "c1", "cancel": true}')
    assert poll_until(lambda: fake.received() == [{"context_id": "c1", "cancel": True}])


def test_the_reader_yields_inside_a_burst_of_messages_never_for_one_that_came_alone() -> None:
    """Messages read at once (handled back to back) get a yield every YIELD_EVERY; messages
    that came one at a time, however many, get none: each yield is a hub round trip."""
    burst = Burst()
    in_a_burst = [burst.handled(i * BURST_GAP_S / 10) for i in range(3 * YIELD_EVERY)]
    one_at_a_time = [burst.handled(1.0 + i * 0.02) for i in range(3 * YIELD_EVERY)]

    assert [i + 1 for i, y in enumerate(in_a_burst) if y] == [
        YIELD_EVERY,
        2 * YIELD_EVERY,
        3 * YIELD_EVERY,
    ]
    assert not any(one_at_a_time)
