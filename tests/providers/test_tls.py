"""Provider websockets share one TLS context: building one costs ~45 ms of CPU, a stall
of every call in the voice process if it happens per call."""

from __future__ import annotations

import ssl

import websockets.sync.client

from shared.config import Settings
from shared.providers import tls
from shared.providers.tts.cartesia import CartesiaTts


def test_websockets_default_context_is_the_shared_one_after_install() -> None:
    tls.share_with_websockets()
    module = websockets.sync.client.ssl_module  # what the client calls for a wss URL
    assert module.create_default_context() is tls.client_context()
    assert module.create_default_context() is module.create_default_context()
    assert module.create_default_context(cafile=None) is not tls.client_context()
    assert module.SSLContext is ssl.SSLContext and module.PROTOCOL_TLS_CLIENT
    assert tls.client_context().verify_mode == ssl.CERT_REQUIRED
    assert tls.client_context().check_hostname


def test_cartesia_providers_of_different_calls_share_one_sdk_client(settings: Settings) -> None:
    configured = settings.model_copy(update={"cartesia_api_key": "sk_test"})
    first, second = CartesiaTts(configured), CartesiaTts(configured)
    assert first._client is second._client
