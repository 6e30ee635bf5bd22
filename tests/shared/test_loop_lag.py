"""`voice_event_loop_lag_seconds`: a greenlet that holds the interpreter shows up as lag."""

from __future__ import annotations

from tests.conftest import run_fresh

# A fresh interpreter patched by gevent, as the voice worker is: the probe must see a
# greenlet that runs 150 ms without yielding, and only then (no lag before it).
CHECK = """
from gevent import monkey
monkey.patch_all()
import time, gevent
from prometheus_client import REGISTRY
from web.voice.runtime import watch_loop_lag

def lags():
    buckets = {"0.1": 0.0, "+Inf": 0.0}
    for le in buckets:
        name = "voice_event_loop_lag_seconds_bucket"
        buckets[le] = REGISTRY.get_sample_value(name, {"le": le}) or 0.0
    return buckets

lag = watch_loop_lag(interval_s=0.01)
gevent.sleep(0.2)
quiet = lags()
end = time.monotonic() + 0.15
while time.monotonic() < end:  # CPU work that never yields
    pass
gevent.sleep(0.05)
busy = lags()
lag.close()
quiet_ok = quiet["+Inf"] >= 5 and quiet["0.1"] == quiet["+Inf"]
hog_seen = busy["+Inf"] - busy["0.1"] >= 1
print(quiet_ok, hog_seen)
"""


def test_a_greenlet_that_does_not_yield_is_seen_as_lag() -> None:
    assert run_fresh(CHECK).split() == ["True", "True"]
