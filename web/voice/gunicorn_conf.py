"""gunicorn config of the `voice` process: one gevent worker holds every live call."""

from shared.config import load_settings
from web.gunicorn_common import configure

_settings = load_settings()
configure(globals(), "voice", _settings.voice_port, 1)
