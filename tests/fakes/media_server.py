"""A tiny websocket server playing the voice process's role for the fake Telnyx phone."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve


class Conn:
    """One websocket the voice-process stand-in accepted: what came in, what went out."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.path = ws.request.path if ws.request else ""
        self.headers = ws.request.headers if ws.request else {}
        self.received: list[tuple[float, str | bytes]] = []
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.ended = False
        self.close_code: int | None = None
        self._changed = threading.Condition()

    def record(self) -> None:
        """Receive until the connection closes (runs on its own thread)."""
        try:
            for message in self.ws:
                with self._changed:
                    self.received.append((time.monotonic(), message))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        with self._changed:
            close = self.ws.protocol.close_rcvd
            self.close_code = close.code if close else None
            self.ended = True
            self._changed.notify_all()

    def of(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        """The JSON messages of one event type, with their arrival times."""
        with self._changed:
            received = list(self.received)
        out = []
        for t, message in received:
            parsed = json.loads(message) if isinstance(message, str) else None
            if isinstance(parsed, dict) and parsed.get("event") == event:
                out.append((t, parsed))
        return out

    def wait(self, done: Callable[[], bool], timeout: float = 3.0) -> None:
        """Wait until `done()` (or the connection has ended); fail the test on timeout."""
        with self._changed:
            assert self._changed.wait_for(lambda: done() or self.ended, timeout)

    def wait_end(self, timeout: float = 5.0) -> None:
        """Wait until the connection has closed."""
        with self._changed:
            self._changed.wait_for(lambda: self.ended, timeout)

    def send(self, message: dict[str, Any]) -> float:
        """Send a JSON message; returns the monotonic time just before sending."""
        t = time.monotonic()
        self.ws.send(json.dumps(message))
        self.sent.append((t, message))
        return t

    def send_media(self, audio: bytes) -> float:
        """Send agent audio the way the voice process does (no stream_id, like pipecat)."""
        return self.send({"event": "media", "media": {"payload": base64.b64encode(audio).decode()}})


class VoiceServer:
    """A websocket server on 127.0.0.1 that records each connection and runs `script`."""

    def __init__(self, script: Callable[[Conn], None]) -> None:
        self.script = script
        self.conns: list[Conn] = []
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None, ping_interval=None)
        port = self._server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/media/telnyx?token=t0k"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handle(self, ws: ServerConnection) -> None:
        conn = Conn(ws)
        self.conns.append(conn)
        recorder = threading.Thread(target=conn.record)
        recorder.start()
        self.script(conn)
        conn.wait_end()
        recorder.join(timeout=5)

    def conn(self, index: int = 0) -> Conn:
        """The `index`-th connection, waiting up to 3 s for it."""
        deadline = time.monotonic() + 3
        while len(self.conns) <= index and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.conns[index]

    def close(self) -> None:
        self._server.shutdown()


def wait_started(conn: Conn) -> None:
    """Wait for the fake's `start` message."""
    conn.wait(lambda: bool(conn.of("start")))
