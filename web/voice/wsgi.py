"""gunicorn entry point of the `voice` process."""

from shared.config import load_settings
from shared.observability.logging import setup_logging
from web.voice.app import create_app

settings = load_settings()
setup_logging("voice", fmt=settings.log_format, level=settings.log_level)
app = create_app(settings)
