"""The `voice` process's Flask app: the Telnyx media-stream websocket, /healthz, /metrics."""

from __future__ import annotations

import logging

from flask import Flask
from flask_sock import Sock

from shared import native
from shared.config import Settings
from web import http_common
from web.voice.media import media_stream
from web.voice.media_socket import DeferredReader, without_extensions
from web.voice.runtime import VoiceRuntime

log = logging.getLogger(__name__)


def create_app(settings: Settings, runtime: VoiceRuntime) -> Flask:
    log.info("voice: %s", native.describe())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # flask-sock does the upgrade; the handler then reads and writes the socket itself.
    app.config["SOCK_SERVER_OPTIONS"] = {"thread_class": DeferredReader}
    app.wsgi_app = without_extensions(app.wsgi_app)  # type: ignore[method-assign]
    app.extensions["voice"] = runtime
    http_common.install(app, "voice")
    Sock(app).route("/media/telnyx")(media_stream)

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, str], int]:
        """503 until the local models (STT, TTS, embeddings) are loaded."""
        return ({"status": "ready"}, 200) if runtime.ready else ({"status": "warming up"}, 503)

    return app
