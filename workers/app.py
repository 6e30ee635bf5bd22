"""The module Dramatiq's worker imports: set up logging, the broker, then the actors."""

import dramatiq

from shared.config import load_settings
from shared.observability.logging import setup_logging
from workers.broker import build_broker

settings = load_settings()
setup_logging("worker", fmt=settings.log_format, level=settings.log_level)
broker = build_broker(settings)
dramatiq.set_broker(broker)

import workers.actors  # noqa: E402,F401  - registers the actors on the broker set above
