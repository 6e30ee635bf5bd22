"""One TLS client context per process for the providers' websockets.

Building an `SSLContext` parses the CA bundle: ~45 ms of CPU on this machine. Under gevent
that stalls every call in the voice process, and it happened per call: websockets builds
a context for each wss connection it is not given one for (the Deepgram SDK passes none),
and each new Cartesia SDK client builds one for its HTTP side. A context is made to be
shared by many connections; these helpers make sure one is.
"""

from __future__ import annotations

import functools
import ssl
import types
from typing import Any

import websockets.sync.client


@functools.cache
def client_context() -> ssl.SSLContext:
    """The process's default client context (system CAs, hostname checks)."""
    return ssl.create_default_context()


class _SslSharingDefault(types.ModuleType):
    """The `ssl` module, except that the argument-less `create_default_context()` returns
    the shared context. websockets' sync client calls exactly that for a wss URL when
    no `ssl` is passed, and only wraps sockets with it (it never changes the context)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        if args or kwargs:
            return ssl.create_default_context(*args, **kwargs)
        return client_context()


def share_with_websockets() -> None:
    """Let websockets' sync client (used by the Deepgram and Cartesia SDKs) reuse the
    shared context. Hand-made because neither SDK exposes the option for every socket."""
    websockets.sync.client.ssl_module = _SslSharingDefault("ssl")  # type: ignore[attr-defined]
