"""gunicorn config of the `web` process."""

from shared.config import load_settings
from web.gunicorn_common import configure

_settings = load_settings()
configure(globals(), "web", _settings.web_port, _settings.web_workers)
