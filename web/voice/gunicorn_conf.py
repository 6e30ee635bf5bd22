"""gunicorn config of the `voice` process: one gevent worker holds every live call."""

import gevent

from shared.config import load_settings
from web.gunicorn_common import configure

# Each greenlet would keep the stack it was spawned from (~9 gevent frame objects, and
# their lists): a call runs about ten long-lived greenlets, and every full garbage
# collection walks all of them with every call's audio stalled (docs/voice-benchmark-log.md).
gevent.config.track_greenlet_tree = False

_settings = load_settings()
configure(globals(), "voice", _settings.voice_port, 1)
