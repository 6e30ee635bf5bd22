"""Agent audio pacing: small lead at Telnyx, a mark per chunk, clear drops the rest."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event
from prometheus_client import REGISTRY

from shared.voice.playout import MARK_GRACE_S, Pacer, Playout
from shared.voice.telnyx_media import StreamClosed
from web.voice.read_ticker import ReadTicker

SECOND = 8000  # bytes of 8 kHz μ-law


@pytest.fixture(params=["greenlet", "ticker"])
def pacing(request: pytest.FixtureRequest) -> str:
    """Every test twice: paced by a greenlet of its own, and by a read ticker's rounds (the
    voice process's way)."""
    return str(request.param)


def paced_playout(
    send: Callable[..., None], pacing: str, **options: Any
) -> tuple[Playout, gevent.Greenlet]:
    """A playout and what paces it: its `run()` greenlet, or a greenlet that ends when it
    closes while a read ticker steps it (sending through `send` as its `send_now`)."""
    if pacing == "greenlet":
        playout = Playout(send, **options)
        return playout, gevent.spawn(playout.run)

    def send_now(*texts: str) -> bool:
        send(*texts)
        return True

    playout = Playout(send, pacer=Pacer(ReadTicker().at, send_now), **options)
    return playout, gevent.spawn(_until_closed, playout)


def recorded_playout(
    pacing: str, **options: Any
) -> tuple[list[tuple[float, dict]], Playout, gevent.Greenlet]:
    """`paced_playout` with a send that keeps each message, decoded, with when it was sent."""
    sent: list[tuple[float, dict]] = []

    def send(*texts: str) -> None:
        sent.extend((time.monotonic(), json.loads(t)) for t in texts)

    return sent, *paced_playout(send, pacing, **options)


def _until_closed(playout: Playout) -> None:
    while not playout.closed:
        gevent.sleep(0.01)


def test_audio_is_paced_against_real_time_with_a_mark_after_each_chunk(pacing: str) -> None:
    sent, playout, pacer = recorded_playout(pacing, chunk_ms=40, lead_ms=80)
    audio = playout.begin_turn(1)
    start = time.monotonic()
    playout.add(audio, b"\x7f" * (SECOND // 2))  # 500 ms
    playout.finish(audio)
    playout.idle.wait(timeout=3)
    playout.close()
    pacer.join(timeout=1)
    media = [(t, m) for t, m in sent if m["event"] == "media"]
    marks = [m["mark"]["name"] for _, m in sent if m["event"] == "mark"]
    assert len(media) == len(marks) == 13  # 12 full 40 ms chunks + the 20 ms rest
    assert marks[-1] == f"1:{SECOND // 2}"
    # Never more than lead + one chunk ahead of real time.
    for (t, _), sent_bytes in zip(media, range(320, SECOND, 320), strict=False):
        assert sent_bytes / SECOND - (t - start) <= 0.08 + 0.04 + 0.02
    assert time.monotonic() - start >= 0.5 - 0.08 - 0.04


def test_marks_tell_what_was_heard_and_clear_drops_the_rest(pacing: str) -> None:
    sent: list[dict] = []
    playout, pacer = paced_playout(
        lambda *texts: sent.extend(json.loads(t) for t in texts), pacing, chunk_ms=100, lead_ms=100
    )
    audio = playout.begin_turn(7)
    playout.add(audio, b"\x7f" * SECOND)
    gevent.sleep(0.25)
    first_mark = next(m["mark"]["name"] for m in sent if m["event"] == "mark")
    playout.on_mark(first_mark)
    assert audio.heard == 800 and playout.speaking
    cut = playout.clear()
    assert cut is audio and sent[-1] == {"event": "clear"}
    assert audio.sent < SECOND and not audio.queued
    playout.on_mark(f"7:{audio.sent}")  # Telnyx returns queued marks after a clear: not heard
    assert audio.heard == 800
    assert not playout.speaking
    playout.close()
    pacer.join(timeout=1)


def test_a_socket_closed_mid_turn_stops_the_pacer_quietly(pacing: str) -> None:
    sent: list[str] = []

    def send(*texts: str) -> None:
        if len(sent) >= 4:
            raise StreamClosed("BrokenPipeError")
        sent.extend(texts)

    playout, pacer = paced_playout(send, pacing, chunk_ms=20, lead_ms=40)
    audio = playout.begin_turn(1)
    playout.add(audio, b"\x7f" * SECOND)
    pacer.join(timeout=2)
    assert pacer.successful() and pacer.dead, "the pacer ends without an exception"
    assert playout.closed and len(sent) == 4
    playout.clear()  # a barge-in after the hang-up sends nothing
    assert len(sent) == 4


def test_waiting_for_a_turn_to_be_heard_ends_on_its_last_mark_a_clear_or_the_clock(
    pacing: str,
) -> None:
    sent: list[dict] = []
    playout, pacer = paced_playout(
        lambda *texts: sent.extend(json.loads(t) for t in texts), pacing, lead_ms=1000
    )

    heard = playout.begin_turn(1)
    playout.add(heard, b"\x7f" * SECOND)  # 1 s, all sent at once (1 s lead)
    playout.finish(heard)
    gevent.sleep(0.05)
    last = [m["mark"]["name"] for m in sent if m["event"] == "mark"][-1]
    gevent.spawn_later(0.1, playout.on_mark, last)  # Telnyx echoes the last mark early
    start = time.monotonic()
    playout.wait_heard(heard)
    assert heard.heard == SECOND and time.monotonic() - start < 0.5

    cut = playout.begin_turn(2)
    playout.add(cut, b"\x7f" * SECOND)
    playout.finish(cut)
    gevent.spawn_later(0.1, playout.clear)
    start = time.monotonic()
    playout.wait_heard(cut)
    assert cut.cleared and time.monotonic() - start < 0.5

    unmarked = playout.begin_turn(3)  # a peer that echoes no marks: our clock decides,
    playout.add(unmarked, b"\x7f" * (SECOND // 2))  # after a grace for the echo's way back
    playout.finish(unmarked)
    start = time.monotonic()
    playout.wait_heard(unmarked)
    waited = time.monotonic() - start
    assert 0.4 + MARK_GRACE_S <= waited < 0.8 + MARK_GRACE_S and not playout.speaking

    late = playout.begin_turn(4)  # the last mark echoed after our clock's end: still heard
    playout.add(late, b"\x7f" * (SECOND // 5))
    playout.finish(late)
    gevent.sleep(0.05)
    last = [m["mark"]["name"] for m in sent if m["event"] == "mark"][-1]
    gevent.spawn_later(0.2 + MARK_GRACE_S / 2, playout.on_mark, last)
    playout.wait_heard(late)
    assert late.heard == late.total
    playout.close()
    pacer.join(timeout=1)


class _CountedWaits:
    """A turn's `changed` event, counting the waits on it."""

    def __init__(self, event: Event) -> None:
        self.event, self.waits = event, 0

    def set(self) -> None:
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return bool(self.event.wait(timeout))


def test_waiting_for_a_long_answer_to_be_heard_wakes_once_not_once_per_lead(pacing: str) -> None:
    # Telnyx echoes each mark when the audio before it has played.
    playout: Playout
    played_until = [0.0]

    def send(*texts: str) -> None:
        for message in map(json.loads, texts):
            if message["event"] == "media":
                chunk_s = len(base64.b64decode(message["media"]["payload"])) / SECOND
                played_until[0] = max(played_until[0], time.monotonic()) + chunk_s
            elif message["event"] == "mark":
                due = played_until[0] - time.monotonic()
                gevent.spawn_later(due, playout.on_mark, message["mark"]["name"])

    playout, pacer = paced_playout(send, pacing, chunk_ms=100, lead_ms=200)
    answer = playout.begin_turn(1)
    answer.changed = _CountedWaits(answer.changed)  # type: ignore[assignment]
    playout.add(answer, b"\x7f" * (3 * SECOND // 2))  # 1.5 s, all from TTS already
    playout.finish(answer)
    start = time.monotonic()
    playout.wait_heard(answer)
    assert answer.heard == answer.total and 1.3 < time.monotonic() - start < 2.0
    # Woken by the last mark; waiting on the audio sent so far woke it every ~lead (6+).
    assert answer.changed.waits <= 2
    playout.close()
    pacer.join(timeout=1)


def _gaps(cause: str) -> float:
    return REGISTRY.get_sample_value("voice_playout_gaps_total", {"cause": cause}) or 0.0


def test_a_silence_inside_a_turn_is_counted_with_its_cause(pacing: str) -> None:
    playout, pacer = paced_playout(lambda *texts: None, pacing, chunk_ms=20, lead_ms=40)
    tts, here = _gaps("tts"), _gaps("playout")

    # The TTS is late: 100 ms of audio plays out, the rest comes 200 ms after.
    audio = playout.begin_turn(1)
    playout.add(audio, b"\x7f" * (SECOND // 10))
    gevent.sleep(0.3)
    playout.add(audio, b"\x7f" * (SECOND // 10))
    playout.finish(audio)
    gevent.sleep(0.2)
    assert (_gaps("tts") - tts, _gaps("playout") - here) == (1, 0)

    # This process is late: the audio is here, but nothing runs the pacer for 300 ms
    # (time.sleep blocks the whole hub in this unpatched test process).
    audio = playout.begin_turn(2)
    playout.add(audio, b"\x7f" * SECOND)
    gevent.sleep(0.05)
    time.sleep(0.3)
    gevent.sleep(0.05)
    assert (_gaps("tts") - tts, _gaps("playout") - here) == (1, 1)

    # Paced with the audio there all along: no silence.
    playout.clear()
    audio = playout.begin_turn(3)
    playout.add(audio, b"\x7f" * (SECOND // 2))
    playout.finish(audio)
    playout.idle.wait(timeout=3)
    assert (_gaps("tts") - tts, _gaps("playout") - here) == (1, 1)
    playout.close()
    pacer.join(timeout=1)


def test_after_a_clear_the_next_turns_audio_goes_at_once(pacing: str) -> None:
    sent, playout, pacer = recorded_playout(pacing, chunk_ms=400, lead_ms=400)
    cut = playout.begin_turn(1)
    playout.add(cut, b"\x7f" * (2 * SECOND))
    gevent.sleep(0.05)  # two chunks out: the pacer waits ~350 ms for the lead to shrink
    playout.clear()
    answer = playout.begin_turn(2)
    added = time.monotonic()
    playout.add(answer, b"\x7f" * SECOND)
    gevent.sleep(0.15)
    first = next(t for t, m in sent if m["event"] == "mark" and m["mark"]["name"].startswith("2:"))
    assert first - added < 0.1, "the new turn waited for the cut turn's pacing"
    playout.close()
    pacer.join(timeout=1)


def test_a_send_that_would_wait_is_tried_again_in_a_later_round_with_nothing_lost() -> None:
    ticker = ReadTicker()
    sent: list[dict] = []
    tries = [0]
    in_pump: list[bool] = []

    def send_now(*texts: str) -> bool:
        in_pump.append(gevent.getcurrent() is ticker._pump)
        tries[0] += 1
        if tries[0] % 3 == 0:
            return False  # the socket's buffer is full: nothing was sent
        sent.extend(json.loads(t) for t in texts)
        return True

    playout = Playout(lambda *t: None, chunk_ms=20, lead_ms=40, pacer=Pacer(ticker.at, send_now))
    audio = playout.begin_turn(1)
    pcm = bytes(range(256)) * 2  # 512 bytes: every chunk tells where it came from
    playout.add(audio, pcm)
    assert sent, "a turn's first chunk leaves as its audio comes, from add() itself"
    playout.finish(audio)
    playout.idle.wait(timeout=3)
    media = [base64.b64decode(m["media"]["payload"]) for m in sent if m["event"] == "media"]
    marks = [m["mark"]["name"] for m in sent if m["event"] == "mark"]
    assert tries[0] > len(media) > 3, "some sends were refused and tried again"
    assert b"".join(media)[: len(pcm)] == pcm  # each chunk once, in order (then padding)
    assert marks == ["1:160", "1:320", "1:480", "1:512"] and audio.sent == len(pcm)
    assert not in_pump[0] and in_pump[-1], "the rest in the ticker's pump"
    playout.close()


def test_a_peer_that_stops_reading_costs_a_few_tries_not_one_every_round() -> None:
    # A socket whose buffer stays full (Telnyx not reading) refuses every send; trying
    # again in every round (500 a second) would spend the pump's time on it.
    ticker = ReadTicker()
    sent: list[str] = []
    tries: list[float] = []
    full_until = time.monotonic() + 0.3

    def send_now(*texts: str) -> bool:
        tries.append(time.monotonic())
        if time.monotonic() < full_until:
            return False
        sent.extend(texts)
        return True

    playout = Playout(lambda *t: None, chunk_ms=20, lead_ms=40, pacer=Pacer(ticker.at, send_now))
    audio = playout.begin_turn(1)
    playout.add(audio, b"\x7f" * 800)
    playout.finish(audio)
    playout.idle.wait(timeout=3)
    refused = [t for t in tries if t < full_until]
    assert 3 <= len(refused) <= 10, len(refused)
    assert audio.sent == 800 and len(sent) == 2 * 5  # then every chunk, once
    playout.close()
