"""What a call start must not pay for: under gevent, CPU spent when a call starts stalls
every other call in the voice process. A TLS context (~45 ms), an SDK client, an SDK's
lazily imported modules (~12-24 ms), the SDKs' platform headers (a fork of the process) are
built once, at start-up."""

from __future__ import annotations

import ssl

import websockets.sync.client

from shared.config import Settings
from shared.providers import tls
from shared.providers.tts.cartesia import CartesiaTts
from tests.conftest import run_fresh


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


CHECK_NO_LAZY_IMPORTS = """
import sys
from shared.config import load_settings
from shared.providers.registry import build_providers
keys = {"deepgram_api_key": "dg", "groq_api_key": "gsk_x", "cartesia_api_key": "sk_x"}
providers = build_providers(load_settings().model_copy(update=keys))
loaded = set(sys.modules)
call = providers.for_call()  # what a call start builds
_ = (providers.stt._client.listen.v1, providers.llm._client.chat.completions,
     providers.sentiment._client.chat.completions, call.tts.current._client.tts)
print(sorted(set(sys.modules) - loaded))
"""


CHECK_NO_FORK_AT_FIRST_REQUEST = """
import subprocess
from shared.config import load_settings
from shared.providers.registry import build_providers
keys = {"deepgram_api_key": "dg", "groq_api_key": "gsk_x", "cartesia_api_key": "sk_x"}
providers = build_providers(load_settings().model_copy(update=keys))
started = []
def no_process(self, args, *rest, **kwargs):  # the SDKs swallow errors here: record it
    started.append(args)
    raise OSError("no process may start once the calls run")
subprocess.Popen.__init__ = no_process
call = providers.for_call()
for client in (providers.llm._client, providers.sentiment._client, call.tts.current._client):
    client.platform_headers()  # what each SDK computes for its first request
print(started)
"""


def run_check(script: str) -> str:
    """`script` in a fresh interpreter (cold caches, as a voice worker starts); its last line."""
    return run_fresh(script, timeout=120).strip().splitlines()[-1]


def test_the_sdk_modules_a_call_uses_are_imported_at_start_up() -> None:
    assert run_check(CHECK_NO_LAZY_IMPORTS) == "[]"


def test_the_sdks_platform_headers_are_known_before_the_first_call() -> None:
    assert run_check(CHECK_NO_FORK_AT_FIRST_REQUEST) == "[]"
