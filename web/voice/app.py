"""The `voice` process's Flask app. The media-stream loop arrives with the voice issue;
until then it serves /healthz and /metrics."""

from __future__ import annotations

from flask import Flask

from shared.config import Settings
from web import http_common


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    http_common.install(app, "voice")
    return app
