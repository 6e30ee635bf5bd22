"""gunicorn entry point of the `voice` process (one gevent worker holds every live call)."""

from shared.config import load_settings
from shared.db.engine import make_autocommit_session_factory, make_engine
from shared.observability.logging import setup_logging
from shared.observability.tracing import setup_tracing
from shared.providers.registry import build_providers
from shared.queue.broker import build_broker
from shared.voice.call_loop import LoopConfig
from web.voice.app import create_app
from web.voice.runtime import VoiceRuntime

settings = load_settings()
setup_logging("voice", fmt=settings.log_format, level=settings.log_level)
setup_tracing("voice", settings)
runtime = VoiceRuntime(
    settings=settings,
    # The voice process only reads (a call's context) and writes single rows (a turn):
    # autocommit sessions spare each a BEGIN and a COMMIT round trip.
    sessions=make_autocommit_session_factory(
        make_engine(settings.require_database_url(), pool_size=settings.db_pool_size)
    ),
    providers=build_providers(settings),
    broker=build_broker(settings),
    loop_config=LoopConfig(chunk_ms=settings.voice_chunk_ms, lead_ms=settings.voice_lead_ms),
)
runtime.warm_up()
app = create_app(settings, runtime)
