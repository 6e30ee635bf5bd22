"""The fake Telnyx phone against a tiny local server playing the voice process's role."""

from __future__ import annotations

import base64
import itertools
import json
import math
import struct
import threading
import time
import wave
from pathlib import Path

import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from scripts.fakes.telnyx_media import (
    CallClosed,
    FakeTelnyxCall,
    MediaLoop,
    pcmu_from_wav,
    silence_ulaw,
)
from scripts.fakes.telnyx_playout import Playout
from tests.fakes.media_server import Conn, wait_started

SPEECH = bytes(0x10 + i % 100 for i in range(8000))  # 1 s of "caller speech", no 0xFF
AGENT = bytes(0x80 - i % 100 for i in range(16000))  # 2 s of "agent speech"
MS100 = 800  # bytes of μ-law in 100 ms
SLACK = 0.1  # upper bounds on timing stay loose: CI machines are busy; lower bounds are exact


def test_the_call_opens_with_connected_then_start_then_paced_string_typed_media(make_server):
    server = make_server()
    headers = {"x-telnyx-streaming-auth-token": "s3cret"}
    with FakeTelnyxCall(server.url, call_control_id="v2:abc", extra_headers=headers) as call:
        lateness = call.send_audio(SPEECH[:1500])  # 9.4 frames: the 10th is padded
        conn = server.conn()
        conn.wait(lambda: len(conn.of("media")) == 10)

    texts = [m for _, m in conn.received]
    assert conn.path == "/media/telnyx?token=t0k"
    assert conn.headers["x-telnyx-streaming-auth-token"] == "s3cret"
    assert json.loads(texts[0]) == {"event": "connected", "version": "1.0.0"}
    assert json.loads(texts[1]) == {
        "event": "start",
        "sequence_number": "1",
        "stream_id": call.stream_id,
        "start": {
            "user_id": call.user_id,
            "call_control_id": "v2:abc",
            "call_session_id": call.call_session_id,
            "from": "+14155550999",
            "to": "+14155550123",
            "tags": [],
            "client_state": None,
            "custom_parameters": {},
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
    media = [m for _, m in conn.of("media")]
    assert [m["sequence_number"] for m in media] == [str(n) for n in range(2, 12)]
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, 11)]
    assert {m["stream_id"] for m in media} == {call.stream_id}
    assert {m["media"]["track"] for m in media} == {"inbound"}
    stamps = [int(m["media"]["timestamp"]) for m in media]
    assert all(isinstance(m["media"]["timestamp"], str) for m in media)
    assert [b - a for a, b in itertools.pairwise(stamps)] == [20] * 9
    audio = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    assert audio == SPEECH[:1500] + b"\xff" * 100
    arrivals = [t for t, _ in conn.of("media")]
    assert 0.15 < arrivals[-1] - arrivals[0] < 0.25  # 9 intervals of 20 ms
    assert max(b - a for a, b in itertools.pairwise(arrivals)) < 0.02 + SLACK
    assert lateness < SLACK


def test_stop_sends_the_stop_frame_then_closes_the_websocket_cleanly(make_server):
    server = make_server()
    call = FakeTelnyxCall(server.url, call_control_id="v2:stop").connect()
    call.send_audio(SPEECH[:320], realtime=False)
    call.stop()
    conn = server.conn()
    conn.wait_end()

    assert conn.of("stop")[-1][1] == {
        "event": "stop",
        "sequence_number": "4",  # start 1, media 2 and 3
        "stream_id": call.stream_id,
        "stop": {"user_id": call.user_id, "call_control_id": "v2:stop"},
    }
    assert conn.close_code == 1000
    assert call.closed
    with pytest.raises(CallClosed):
        call.send_audio(SPEECH[:160])
    call.close()


def test_a_mark_is_echoed_when_the_audio_queued_before_it_has_played_and_not_before(make_server):
    def script(conn: Conn) -> None:
        wait_started(conn)
        conn.send({"event": "mark", "mark": {"name": "nothing-queued"}})
        for i in range(3):
            conn.send_media(AGENT[i * MS100 : (i + 1) * MS100])
        conn.send({"event": "mark", "mark": {"name": "after-300ms"}})

    server = make_server(script)
    with FakeTelnyxCall(server.url, call_control_id="v2:marks") as call:
        assert call.wait_for("mark_echo", detail="after-300ms", timeout=3)
        conn = server.conn()
        conn.wait(lambda: len(conn.of("mark")) == 2)

    echoes = {m["mark"]["name"]: t for t, m in conn.of("mark")}
    assert {m["stream_id"] for _, m in conn.of("mark")} == {call.stream_id}
    sent = {m["event"] + m.get("mark", {}).get("name", ""): t for t, m in conn.sent}
    assert echoes["nothing-queued"] - sent["marknothing-queued"] < SLACK
    first_audio = conn.sent[1][0]
    assert echoes["after-300ms"] >= first_audio + 0.3  # never before the audio has played
    assert echoes["after-300ms"] < first_audio + 0.3 + SLACK
    media_at = call.wait_for("media")
    echo_at = call.wait_for("mark_echo", detail="after-300ms")
    assert media_at and echo_at
    assert 0.3 <= echo_at[0] - media_at[0] < 0.3 + SLACK
    assert call.chunk_sizes == [MS100] * 3


def test_clear_drops_the_queued_audio_and_returns_the_pending_marks_at_once(make_server):
    def script(conn: Conn) -> None:
        wait_started(conn)
        conn.send_media(AGENT[:MS100])
        conn.send_media(AGENT[MS100 : 2 * MS100])
        time.sleep(0.3)  # the first 200 ms have played
        for i in range(2, 12):
            conn.send_media(AGENT[i * MS100 : (i + 1) * MS100])
        conn.send({"event": "mark", "mark": {"name": "end-of-turn"}})
        time.sleep(0.1)
        conn.send({"event": "clear"})

    server = make_server(script)
    with FakeTelnyxCall(server.url, call_control_id="v2:clear") as call:
        assert call.wait_for("mark_echo", detail="end-of-turn", timeout=3)
        conn = server.conn()
        conn.wait(lambda: bool(conn.of("mark")))
        heard = call.heard
        events = call.events

    sent_clear = conn.sent[-1][0]
    echoed_at = conn.of("mark")[0][0]
    assert echoed_at - sent_clear < SLACK  # at once, not after the second of queued audio
    clear = next(e for e in events if e[1] == "clear")
    second_turn = [e for e in events if e[1] == "media"][2]
    played = round((clear[0] - second_turn[0]) * 8000)
    assert len(heard) == 2 * MS100 + played
    assert 0.08 * 8000 < played < (0.1 + SLACK) * 8000
    assert heard == AGENT[: len(heard)]
    assert clear[2] == 10 * MS100 - played  # the bytes dropped
    latency = call.clear_latency(sent_clear)
    assert latency is not None and 0 <= latency < SLACK
    assert call.clear_latency(time.monotonic()) is None


def underrun_then_turn(conn: Conn) -> None:
    """100 ms, a 50 ms starve, 100 ms, then a mark (end of turn) and a new turn."""
    wait_started(conn)
    conn.send_media(AGENT[:MS100])
    time.sleep(0.15)
    conn.send_media(AGENT[MS100 : 2 * MS100])
    conn.send({"event": "mark", "mark": {"name": "turn-1"}})
    time.sleep(0.25)
    conn.send_media(AGENT[2 * MS100 : 3 * MS100])
    conn.send({"event": "mark", "mark": {"name": "turn-2"}})


def test_a_starved_playout_inside_an_utterance_is_reported_as_an_underrun(make_server):
    server = make_server(underrun_then_turn)
    call = FakeTelnyxCall(server.url, call_control_id="v2:gaps")
    t0 = time.monotonic()
    with call:
        assert call.wait_for("mark_echo", detail="turn-2", timeout=3)
        gaps, underruns = call.gaps, call.underruns()
        first = call.first_audio_after(t0)
        media = [e[0] for e in call.events if e[1] == "media"]

    assert len(gaps) == 2
    assert [g.marks for g in gaps] == [(), ("turn-1",)]
    assert len(underruns) == 1
    assert 0.03 < underruns[0].length < 0.05 + SLACK
    assert underruns[0].at == pytest.approx(media[0] + 0.1, abs=0.001)
    assert first == media[0]
    assert call.first_audio_after(media[2] - 0.01) == media[2]
    assert call.underruns(min_gap=0.2) == []


def test_what_was_heard_is_written_as_an_8khz_wav_with_or_without_its_gaps(make_server, tmp_path):
    server = make_server(underrun_then_turn)
    with FakeTelnyxCall(server.url, call_control_id="v2:wav") as call:
        assert call.wait_for("mark_echo", detail="turn-2", timeout=3)
        call.write_wav(tmp_path / "heard.wav")
        call.write_wav(tmp_path / "timed.wav", with_gaps=True)
        gap_bytes = sum(round(g.length * 8000) for g in call.gaps)

    with wave.open(str(tmp_path / "heard.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() == 3 * MS100
    with wave.open(str(tmp_path / "timed.wav")) as wav:
        assert abs(wav.getnframes() - (3 * MS100 + gap_bytes)) <= 2


def test_the_open_line_keeps_silence_flowing_and_speech_interjects_without_drift(make_server):
    server = make_server()
    with FakeTelnyxCall(server.url, call_control_id="v2:line") as call:
        call.start_line()
        time.sleep(0.1)
        lateness = call.send_audio(SPEECH[:MS100])
        time.sleep(0.1)
        conn = server.conn()

    media = conn.of("media")
    payloads = [base64.b64decode(m["media"]["payload"]) for _, m in media]
    spoken = [i for i, p in enumerate(payloads) if p != b"\xff" * 160]
    assert len(spoken) == 5 and spoken == list(range(spoken[0], spoken[0] + 5))
    assert b"".join(payloads[i] for i in spoken) == SPEECH[:MS100]
    assert spoken[0] >= 3 and len(payloads) - spoken[-1] > 3  # silence before and after
    chunks = [int(m["media"]["chunk"]) for _, m in media]
    assert chunks == list(range(1, len(media) + 1))
    stamps = [int(m["media"]["timestamp"]) for _, m in media]
    assert {b - a for a, b in itertools.pairwise(stamps)} == {20}
    span = media[-1][0] - media[0][0]
    assert span / (len(media) - 1) == pytest.approx(0.02, abs=0.005)
    assert lateness < SLACK and call.max_lateness < SLACK


def test_raw_frames_and_dtmf_go_out_verbatim(make_server):
    server = make_server()
    with FakeTelnyxCall(server.url, call_control_id="v2:raw") as call:
        call.send_raw("{not json")
        call.send_raw(b"\x00\x01")
        call.send_dtmf("5")
        with pytest.raises(ValueError, match="DTMF"):
            call.send_dtmf("x")
        conn = server.conn()
        conn.wait(lambda: len(conn.received) == 5)

    assert [m for _, m in conn.received[2:5]] == [
        "{not json",
        b"\x00\x01",
        json.dumps(
            {"event": "dtmf", "stream_id": call.stream_id, "dtmf": {"digit": "5"}},
            separators=(",", ":"),
        ),
    ]


def test_bad_messages_from_the_server_are_recorded_and_the_call_goes_on(make_server):
    def script(conn: Conn) -> None:
        wait_started(conn)
        conn.ws.send("nope")
        conn.send({"event": "media", "media": {"payload": "!!not base64"}})
        conn.send({"event": "mark"})
        conn.send({"event": "media", "media": {"payload": base64.b64encode(AGENT[:160]).decode()}})

    server = make_server(script)
    with FakeTelnyxCall(server.url, call_control_id="v2:bad") as call:
        assert call.wait_for("media", timeout=3)
        kinds = [e[1] for e in call.events]

    assert kinds.count("bad_message") == 3
    assert call.chunk_sizes == [160]


def test_a_rejected_handshake_raises_a_clear_error():
    def reject(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(403, "bad token\n")

    with serve(lambda ws: None, "127.0.0.1", 0, process_request=reject) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/media/telnyx?token=nope"
        with pytest.raises(ConnectionError, match="403"):
            FakeTelnyxCall(url, call_control_id="v2:rejected").connect()
        server.shutdown()


def test_drop_resets_the_connection_without_a_stop_frame(make_server):
    server = make_server()
    call = FakeTelnyxCall(server.url, call_control_id="v2:drop").connect()
    call.start_line()
    time.sleep(0.06)
    call.drop()
    conn = server.conn()
    conn.wait_end()

    assert conn.ended and conn.close_code is None  # no close frame
    assert conn.of("stop") == []
    assert call.closed and call.events[-1][1] == "drop"
    with pytest.raises(CallClosed):
        call.send_dtmf("1")
    call.close()


def test_a_server_hangup_ends_the_call_and_later_sends_fail_clearly(make_server):
    def hang_up(conn: Conn) -> None:
        conn.wait(lambda: len(conn.of("media")) >= 3)
        conn.ws.close(1000)

    server = make_server(hang_up)
    call = FakeTelnyxCall(server.url, call_control_id="v2:hangup").connect()
    call.start_line()

    assert call.wait_closed(timeout=3)
    assert call.events[-1][1:] == ("closed", "1000")
    with pytest.raises(CallClosed):
        call.send_audio(SPEECH[:160])
    call.close()


def test_many_calls_share_one_loop_thread(make_server):
    server = make_server()
    before = set(threading.enumerate())
    with MediaLoop() as loop:
        calls = [
            FakeTelnyxCall(server.url, call_control_id=f"v2:{i}", loop=loop).connect()
            for i in range(5)
        ]
        server_side = ("(sock_handler)", "(recv_events)", "(record)")
        new = [t.name for t in set(threading.enumerate()) - before]
        threads = [name for name in new if not name.endswith(server_side)]
        for call in calls:
            call.start_line()
        time.sleep(0.2)
        for call in calls:
            call.close()

    assert threads == ["telnyx-media-loop"]
    assert all(8 <= len(server.conn(i).of("media")) <= 12 for i in range(5))


class Recorder:
    """A ticker that records the slot it was ticked for, for `ticks` ticks."""

    def __init__(self, ticks: int) -> None:
        self.dues: list[float] = []
        self.ticks = ticks

    def on_tick(self, due: float, now: float) -> bool:
        self.dues.append(due)
        return len(self.dues) < self.ticks


def test_a_loop_with_phases_deals_its_calls_to_slots_spread_over_the_tick():
    with MediaLoop(phases=4) as loop:
        tickers = [Recorder(ticks=5) for _ in range(8)]
        for ticker in tickers:
            loop.want_ticks(ticker)
        deadline = time.monotonic() + 2
        while any(len(t.dues) < 5 for t in tickers) and time.monotonic() < deadline:
            time.sleep(0.01)

    start = min(t.dues[0] for t in tickers)
    offsets = [(t.dues[0] - start) * 1000 for t in tickers]  # in ms
    assert all(abs(ms - 5 * round(ms / 5)) < 0.01 for ms in offsets)  # on a 5 ms grid
    slots = sorted(round(ms / 5) % 4 for ms in offsets)
    assert slots == [0, 0, 1, 1, 2, 2, 3, 3]  # two calls per slot, the slots 5 ms apart
    for ticker in tickers:  # each call keeps its slot: one frame every 20 ms
        gaps = {round((b - a) * 1000, 1) for a, b in itertools.pairwise(ticker.dues)}
        assert gaps == {20.0}


def test_any_wav_becomes_8khz_mono_mulaw(tmp_path: Path):
    path = tmp_path / "stereo16k.wav"
    tone = [int(8000 * math.sin(2 * math.pi * 440 * n / 16000)) for n in range(8000)]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"".join(struct.pack("<hh", s, s) for s in tone))

    ulaw = pcmu_from_wav(path)

    assert abs(len(ulaw) - 4000) <= 2  # 0.5 s at 8 kHz
    assert len(set(ulaw)) > 20  # a tone, not silence
    assert silence_ulaw(0.1) == b"\xff" * 800


def test_the_playout_model_plays_queues_marks_and_clears_on_its_own_clock():
    playout = Playout()
    playout.add_audio(10.0, b"a" * 800)  # plays 10.0-10.1
    playout.add_audio(10.05, b"b" * 400)  # queued behind: 10.1-10.15
    assert playout.add_mark(10.06, "m") == pytest.approx(10.15)
    assert playout.pop_due_marks(10.149) == []
    assert playout.pop_due_marks(10.15) == ["m"]
    playout.add_audio(10.2, b"c" * 800)  # after a 50 ms gap that a mark explains
    assert playout.add_mark(10.2, "n") == pytest.approx(10.3)

    assert playout.clear(10.25) == (400, ["n"])

    assert (
        b"".join(audio for _, audio in playout.played(99.0)) == b"a" * 800 + b"b" * 400 + b"c" * 400
    )
    [gap] = playout.gaps
    assert (gap.at, gap.length, gap.marks) == (pytest.approx(10.15), pytest.approx(0.05), ("m",))
    assert playout.underruns() == []
    assert playout.first_audio_after(10.17, now=99.0) == 10.2


def test_nothing_queued_when_the_call_ends_is_ever_heard():
    playout = Playout()
    playout.add_audio(0.0, b"a" * 8000)  # 1 s
    playout.add_mark(0.0, "end")
    playout.finish(0.25)
    playout.add_audio(0.3, b"b" * 800)

    assert len(b"".join(audio for _, audio in playout.played(5.0))) == 2000
    assert playout.pop_due_marks(5.0) == []
