"""The voice worker's frame path, compiled to C with mypyc where a compiler is at hand
(scripts/build_native.py builds it; scripts/bootstrap.sh runs that build).

Why: at 200 calls the worker spends its time in interpreted Python spread thin over these
modules (the media pump's framing and parsing, the call loop, playout, the Deepgram
stream's buffering); compiled, the same code costs the worker ~20 % less CPU a call
(README, Performance (b)). mypyc compiles the code as written and typed, so there is one
source of truth and the pure-Python modules remain the fallback: without a compiler, or
with SWITCHBOARD_NATIVE=0, the same files run interpreted.

What stays interpreted, and why (each found by the test suite run on the compiled build):
`shared.realtime` (its per-greenlet read pace is a `gevent.local` subclass, which compiled
became one object shared by every greenlet), `shared.voice.stages` (a Generic class: the
compiled module fails at import), `shared.providers.messages` (the websockets reader's
handoff: gevent's patched locks raised SystemError from compiled code),
`shared.voice.recorder` (its turn writer stored nothing; off the frame path anyway), and
`shared.providers.groq_client` (a test patches its stream class). The reply path
(`responder`, `sentences`, the Cartesia and Groq adapters): compiled, it first sent every
call to the local voice (pydantic completing the Cartesia SDK's models read its caller's
frames, which a compiled caller does not have; those models are now completed at import),
and then saved nothing the benchmark could tell from the VM's drift (the replies' greenlet
197 µs a run compiled against 202 interpreted): not worth the risk."""

from __future__ import annotations

import importlib.machinery
import importlib.util

MODULES = (
    "shared/ws_frames.py",
    "shared/voice/audio.py",
    "shared/voice/telnyx_media.py",
    "shared/voice/playout.py",
    "shared/voice/call_loop.py",
    "shared/providers/stt/deepgram.py",
    "web/voice/read_ticker.py",
    "web/voice/media_socket.py",
    "web/voice/media.py",
)


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def compiled() -> list[str]:
    """The modules of MODULES that an import here takes from a compiled extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in map(module_name, MODULES)
        if (spec := importlib.util.find_spec(name)) is not None
        and str(spec.origin).endswith(suffixes)
    ]


def describe() -> str:
    """For logs and benchmark headers."""
    return f"{len(compiled())} of {len(MODULES)} frame-path modules compiled (mypyc)"
