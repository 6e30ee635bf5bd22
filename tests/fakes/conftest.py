"""Fixtures for the fake-provider tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fakes.media_server import Conn, VoiceServer


@pytest.fixture
def make_server() -> Iterator[Callable[..., VoiceServer]]:
    """Start local voice-process stand-ins running a script per connection."""
    servers: list[VoiceServer] = []

    def make(script: Callable[[Conn], None] = lambda conn: None) -> VoiceServer:
        servers.append(VoiceServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
