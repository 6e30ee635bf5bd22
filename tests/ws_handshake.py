"""Websocket handshakes done in memory with websockets' sans-I/O protocols, for tests that
drive a client protocol (a fake phone's pipe, a provider connection) frame by frame."""

from __future__ import annotations

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri


def answered(
    url: str = "ws://127.0.0.1/media",
    *,
    max_size: int | None = None,
    refuse: tuple[int, str] | None = None,
) -> tuple[ClientProtocol, ServerProtocol]:
    """A client whose request the server has answered: accepted, or refused with `refuse`
    (status, body). The answer waits in `server.data_to_send()`, for the test to deliver."""
    client = ClientProtocol(parse_uri(url), max_size=max_size)
    server = ServerProtocol(max_size=None)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    (request,) = server.events_received()
    answer = server.accept(request) if refuse is None else server.reject(*refuse)
    server.send_response(answer)
    return client, server


def opened(
    url: str = "ws://127.0.0.1/media", *, max_size: int | None = None
) -> tuple[ClientProtocol, ServerProtocol]:
    """`answered`, with the answer delivered and taken: both sides open, nothing pending."""
    client, server = answered(url, max_size=max_size)
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()  # the handshake's response
    assert client.state is State.OPEN and server.state is State.OPEN
    return client, server
