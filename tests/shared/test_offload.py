"""Model work off the gevent hub: one job at a time, with the hub free meanwhile."""

from __future__ import annotations

import os

from tests.conftest import run_fresh

# A fresh interpreter patched by gevent, as the voice worker is. Six greenlets each run a
# 50 ms "model job" through off_hub while a ticker greenlet counts 5 ms ticks.
CHECK = """
from gevent import monkey
monkey.patch_all()
import gevent
from gevent.monkey import get_original
from shared.providers.offload import MODEL_SLOTS, off_hub

real_sleep = get_original("time", "sleep")
lock = get_original("_thread", "allocate_lock")()
running, most = [0], [0]

def job():
    with lock:
        running[0] += 1
        most[0] = max(most[0], running[0])
    real_sleep(0.05)  # CPU-bound model work stand-in: the thread is busy, the GIL free
    with lock:
        running[0] -= 1
    return "done"

ticks = [0]
def ticker():
    while True:
        gevent.sleep(0.005)
        ticks[0] += 1

t = gevent.spawn(ticker)
results = [g.get() for g in [gevent.spawn(off_hub, job) for _ in range(6)]]
t.kill()
print(MODEL_SLOTS, most[0], results == ["done"] * 6, ticks[0] >= 20)
"""


def test_model_jobs_take_turns_and_the_hub_keeps_running() -> None:
    slots, most, all_done, hub_ran = run_fresh(CHECK).split()
    assert most == slots == "1"
    assert all_done == hub_ran == "True"


# The model thread's priority, the hub's thread's, and that of gevent's own threadpool
# (which also resolves names): only the model thread is lowered.
PRIORITIES = """
from gevent import monkey
monkey.patch_all()
import os
import gevent
from gevent.monkey import get_original
from shared.providers.offload import MODEL_NICE, off_hub

native_id = get_original("_thread", "get_native_id")
nice = lambda: os.getpriority(os.PRIO_PROCESS, native_id())
gevent.sleep(0)  # the hub exists: off_hub uses a model thread
model = [off_hub(lambda: (native_id(), nice())) for _ in range(3)]
pool = gevent.get_hub().threadpool.spawn(nice).get()
print(MODEL_NICE, len({tid for tid, _ in model}), *{n for _, n in model}, nice(), pool)
"""


def test_model_jobs_run_in_one_thread_at_the_lowest_priority_and_nothing_else_does() -> None:
    # Beside the hub on one core, a model thread at the same priority took half of it.
    wanted, threads, model_nice, hub_nice, pool_nice = run_fresh(PRIORITIES).split()
    assert wanted == "19"
    assert threads == "1" and model_nice == wanted
    assert hub_nice == pool_nice == str(os.getpriority(os.PRIO_PROCESS, 0))
