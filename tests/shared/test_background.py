"""start_worker: a daemon thread on plain threads, a greenlet under gevent's patching, with
the join / is_alive that the stream adapters rely on at close."""

from __future__ import annotations

import textwrap
import threading

from shared.background import start_worker
from tests.conftest import run_fresh


def test_on_plain_threads_a_daemon_thread() -> None:
    release = threading.Event()
    worker = start_worker(release.wait, "plain")
    assert isinstance(worker, threading.Thread) and worker.daemon and worker.name == "plain"
    assert worker.is_alive()
    release.set()
    worker.join(2)
    assert not worker.is_alive()


def test_under_gevent_a_greenlet_that_joins_with_a_timeout() -> None:
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import threading, time
        import gevent
        from shared.background import start_worker

        release = threading.Event()
        worker = start_worker(release.wait, "patched")
        assert isinstance(worker._greenlet, gevent.Greenlet), type(worker)
        started = time.monotonic()
        worker.join(0.1)  # bounded, and other greenlets run meanwhile
        assert 0.09 <= time.monotonic() - started < 1 and worker.is_alive()
        release.set()
        worker.join(1)
        assert not worker.is_alive()
        print("ok")
        """
    )
    assert run_fresh(script).strip() == "ok"
