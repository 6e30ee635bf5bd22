"""Agent audio pacing: small lead at Telnyx, a mark per chunk, clear drops the rest."""

from __future__ import annotations

import base64
import json
import time

import gevent
from gevent.event import Event
from prometheus_client import REGISTRY

from shared.voice.playout import Playout
from shared.voice.telnyx_media import StreamClosed

SECOND = 8000  # bytes of 8 kHz μ-law


def run(playout: Playout) -> gevent.Greenlet:
    return gevent.spawn(playout.run)


def test_audio_is_paced_against_real_time_with_a_mark_after_each_chunk() -> None:
    sent: list[tuple[float, dict]] = []
    playout = Playout(
        lambda *texts: sent.extend((time.monotonic(), json.loads(t)) for t in texts),
        chunk_ms=40,
        lead_ms=80,
    )
    pacer = run(playout)
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


def test_marks_tell_what_was_heard_and_clear_drops_the_rest() -> None:
    sent: list[dict] = []
    playout = Playout(
        lambda *texts: sent.extend(json.loads(t) for t in texts), chunk_ms=100, lead_ms=100
    )
    pacer = run(playout)
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


def test_a_socket_closed_mid_turn_stops_the_pacer_quietly() -> None:
    sent: list[str] = []

    def send(*texts: str) -> None:
        if len(sent) >= 4:
            raise StreamClosed("BrokenPipeError")
        sent.extend(texts)

    playout = Playout(send, chunk_ms=20, lead_ms=40)
    pacer = run(playout)
    audio = playout.begin_turn(1)
    playout.add(audio, b"\x7f" * SECOND)
    pacer.join(timeout=2)
    assert pacer.successful() and pacer.dead, "the pacer ends without an exception"
    assert playout.closed and len(sent) == 4
    playout.clear()  # a barge-in after the hang-up sends nothing
    assert len(sent) == 4


def test_waiting_for_a_turn_to_be_heard_ends_on_its_last_mark_a_clear_or_the_clock() -> None:
    sent: list[dict] = []
    playout = Playout(lambda *texts: sent.extend(json.loads(t) for t in texts), lead_ms=1000)
    pacer = run(playout)

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

    unmarked = playout.begin_turn(3)  # a peer that echoes no marks: our clock decides
    playout.add(unmarked, b"\x7f" * (SECOND // 2))
    playout.finish(unmarked)
    start = time.monotonic()
    playout.wait_heard(unmarked)
    assert 0.4 <= time.monotonic() - start < 0.8 and not playout.speaking
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


def test_waiting_for_a_long_answer_to_be_heard_wakes_once_not_once_per_lead() -> None:
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

    playout = Playout(send, chunk_ms=100, lead_ms=200)
    pacer = run(playout)
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


def test_a_silence_inside_a_turn_is_counted_with_its_cause() -> None:
    playout = Playout(lambda *texts: None, chunk_ms=20, lead_ms=40)
    pacer = run(playout)
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
