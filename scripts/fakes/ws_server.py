"""websockets' asyncio server on an event loop of its own thread, for the websocket fakes.

Why not websockets' sync server: it runs two threads per connection (one reads, one runs
the handler) and hands every message from one to the other. Measured on the 2-core VM with
the server pinned to one core, 200 connections each sending a 320-byte message every 40 ms
for 10 s (one reply in 25): the sync server 556-689 ticks of CPU, this one 315-346
(uvloop would save another ~10 %: not worth a dependency). In the voice benchmark at 100
calls (2 interleaved pairs): the Deepgram fake 20-21 % -> 15-16 % of a core, the Cartesia
fake 17-18 % -> 14-16 % (no thread per context either), and the phones sharing their core
ran at most 0.13 s late instead of 1.4-2.3 s. Everything a fake does for its connections
runs on this one loop; other threads reach it through `call`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve

T = TypeVar("T")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class WsServerThread:
    """`WsServerThread(handler, process_request=..., **serve_options).start()`, then `url`,
    `call(coroutine)` from any other thread, and `stop()`."""

    def __init__(
        self,
        handler: Callable[[ServerConnection], Awaitable[None]],
        **serve_options: Any,
    ) -> None:
        self._handler = handler
        self._options = serve_options
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ws-fake", daemon=True)
        self._ready = threading.Event()
        self._server: Server | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    def start(self) -> WsServerThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._server is None:
            raise RuntimeError(f"the websocket fake did not start: {self._error!r}")
        return self

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the server's loop and wait for its result (not from the loop)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(STOP_TIMEOUT)

    def stop(self) -> None:
        """Close the listener and every connection, then end the thread."""
        if not self._thread.is_alive():
            return
        if self._server is not None:
            self.loop.call_soon_threadsafe(self._server.close)
        self._thread.join(STOP_TIMEOUT)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self._ready.set()
            self.loop.close()

    async def _serve(self) -> None:
        try:
            self._server = await serve(self._handler, "127.0.0.1", 0, **self._options)
        except BaseException as exc:
            self._error = exc
            raise
        self._ready.set()
        await self._server.wait_closed()
