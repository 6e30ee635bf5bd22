"""The Telnyx media-stream serializer and the inbound reorder buffer."""

from __future__ import annotations

import base64
import json

import pytest

from shared.voice import telnyx_media as tm

START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": "32DE0DEA",
    "start": {
        "user_id": "u",
        "call_control_id": "v3:abc",
        "call_session_id": "s",
        "from": "+14155550999",
        "to": "+14155550123",
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}


def media(seq: int, payload: bytes = b"\xff" * 160, track: str = "inbound") -> str:
    body = {
        "event": "media",
        "sequence_number": str(seq),
        "stream_id": "32DE0DEA",
        "media": {
            "track": track,
            "chunk": str(seq - 1),
            "timestamp": str(20 * seq),
            "payload": base64.b64encode(payload).decode(),
        },
    }
    return json.dumps(body)


def test_inbound_frames_parse_as_telnyx_sends_them() -> None:
    assert tm.parse('{"event":"connected","version":"1.0.0"}') == tm.Connected("1.0.0")
    assert tm.parse(json.dumps(START)) == tm.Start("32DE0DEA", "v3:abc", "PCMU", 8000)
    assert tm.parse(media(4, b"\x01\x02")) == tm.Media(4, b"\x01\x02", "inbound")
    assert tm.parse('{"event":"dtmf","stream_id":"x","dtmf":{"digit":"7"}}') == tm.Dtmf("7")
    assert tm.parse('{"event":"mark","stream_id":"x","mark":{"name":"1:800"}}') == tm.Mark("1:800")
    assert tm.parse('{"event":"stop","sequence_number":"9","stream_id":"x","stop":{}}') == tm.Stop()
    assert isinstance(tm.parse('{"event":"error","stream_id":"x","error":{"code":1}}'), tm.Error)
    assert tm.parse('{"event":"something_new"}') is None


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1,2]",
        '{"no_event": 1}',
        '{"event":"media","media":{"payload":"***"}}',
        '{"event":"start","start":{}}',
    ],
)
def test_malformed_frames_raise_a_protocol_error(raw: str) -> None:
    with pytest.raises(tm.ProtocolError):
        tm.parse(raw)


def test_outbound_messages_are_what_telnyx_expects() -> None:
    assert json.loads(tm.media_message(b"\x00\xff")) == {
        "event": "media",
        "media": {"payload": "AP8="},
    }
    assert json.loads(tm.mark_message("1:800")) == {"event": "mark", "mark": {"name": "1:800"}}
    assert json.loads(tm.mark_message('say "hi"')) == {
        "event": "mark",
        "mark": {"name": 'say "hi"'},
    }
    assert json.loads(tm.CLEAR_MESSAGE) == {"event": "clear"}


def test_reorderer_restores_order_and_drops_duplicates_and_late_frames() -> None:
    order = tm.Reorderer(depth=3)
    assert order.push(2, b"a") == [b"a"]
    assert order.push(4, b"c") == []  # waits for 3
    assert order.push(3, b"b") == [b"b", b"c"]
    assert order.push(3, b"b") == []  # duplicate
    assert order.push(1, b"old") == []  # older than what was released
    assert order.dropped == 2


def test_reorderer_skips_a_gap_that_never_fills() -> None:
    order = tm.Reorderer(depth=2)
    order.push(1, b"1")
    assert order.push(3, b"3") == []
    assert order.push(4, b"4") == []
    assert order.push(5, b"5") == [b"3", b"4", b"5"]  # frame 2 is lost: move on
