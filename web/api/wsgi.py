"""gunicorn entry point of the `web` process."""

from shared.config import load_settings
from shared.observability.logging import setup_logging
from shared.observability.tracing import setup_tracing
from web.api.app import create_app

settings = load_settings()
setup_logging("web", fmt=settings.log_format, level=settings.log_level)
setup_tracing("web", settings)
app = create_app(settings)
