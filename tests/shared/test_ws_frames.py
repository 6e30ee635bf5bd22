"""Hand-made RFC 6455 frames, checked against websockets' own protocol."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from shared.ws_frames import frame_at, server_text


@pytest.mark.parametrize("length", [0, 1, 125, 126, 1100, 0xFFFF, 0x10000])
def test_a_server_text_frame_is_what_websockets_would_send_and_reads_back(length: int) -> None:
    payload = bytes(ord("a") + n % 26 for n in range(length))
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.send_text(payload)
    framed = server_text(payload)
    assert framed == b"".join(server.data_to_send())
    client = ClientProtocol(parse_uri("ws://voice/"), state=State.OPEN, max_size=None)
    client.receive_data(framed)
    [frame] = client.events_received()
    assert isinstance(frame, Frame) and frame.opcode is Opcode.TEXT and frame.data == payload
    assert frame_at(framed, 0) == (len(framed) - length, len(framed), length)
