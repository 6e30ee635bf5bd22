"""Hand-made RFC 6455 frames, checked against websockets' own protocol."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from shared.ws_frames import Masks, client_binary, frame_at, server_text


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


@pytest.mark.parametrize("length", [0, 1, 125, 126, 320, 0xFFFF, 0x10000])
def test_a_client_binary_frame_reads_back_through_websockets_server_protocol(length: int) -> None:
    payload = bytes(n % 251 for n in range(length))
    masks = Masks()
    framed = [client_binary(payload, masks.next()) for _ in range(3)]
    server = ServerProtocol(state=State.OPEN, max_size=None)
    server.receive_data(b"".join(framed))
    frames = server.events_received()
    assert [(f.opcode, f.data) for f in frames] == [(Opcode.BINARY, payload)] * 3
    assert server.state is State.OPEN and not server.data_to_send()  # nothing refused
    start, end, size = frame_at(framed[0], 0) or (0, 0, 0)
    assert (end, size) == (len(framed[0]), length)
    keys = {frame[start - 4 : start] for frame in framed}
    assert len(keys) == 3  # a fresh mask a frame


def test_masks_come_from_one_bulk_read_and_never_repeat_in_a_pool() -> None:
    masks = Masks()
    drawn = [masks.next() for _ in range(2048)]
    assert all(len(mask) == 4 for mask in drawn)
    assert len(set(drawn)) > 2000  # 2^32 values: repeats are rare, a stuck pool is not
