"""Benchmark: the Groq client's CPU per streamed reply, one connection pool against several.

    .venv/bin/python -m scripts.bench.groq_pool [--calls 100,200] [--rounds 8] [--shards 8]

httpcore's pool walks every connection it holds when a request starts and when its
response closes (closed? expired? idle? the idle ones probed for a server hang-up), for
each of them again, so with one pool per process a reply's cost grows with the square of
the connections kept. Here, in a gevent process like the voice worker, `calls` greenlets
stream replies from the fake Groq server (its own process, so its CPU is not counted)
through `groq_client` with one pool or with `--shards` (its `ShardedTransport`): first one
reply per call every `--period` seconds at random moments, then all at once in `--rounds`
bursts, then the spread again, now with the pools the bursts left. Printed: this process's
CPU per reply and the connections the pools held.
"""

from __future__ import annotations

import sys

from gevent import monkey

if "--serve" not in sys.argv:  # the fake server's own process runs on plain threads
    monkey.patch_all()

import argparse
import random
import statistics
import subprocess
import time

import gevent
import groq

from shared.providers.groq_client import groq_client

KEY = "bench-groq-key"
ANSWER = "On Saturdays we are open from nine until two. Is there anything else I can help with?"
BODY = {
    "model": "llama-3.3-70b-versatile",
    "messages": [{"role": "user", "content": "When are you open on Saturday?"}],
    "stream": True,
}


def _serve() -> None:
    """The fake Groq server, until stdin closes: its URL on stdout."""
    from scripts.fakes.groq_llm import TextReply, start_fake_groq_llm

    reply = TextReply(ANSWER, latency_ms=150, token_interval_ms=10)
    fake = start_fake_groq_llm(KEY, lambda body: reply)
    print(fake.url, flush=True)
    sys.stdin.read()
    fake.stop()


def _reply(client: groq.Groq) -> int:
    stream = client.post(
        "/openai/v1/chat/completions",
        body=BODY,
        cast_to=object,
        stream=True,
        stream_cls=groq.Stream[object],
    )
    try:
        return sum(1 for _ in stream)
    finally:
        stream.close()


def _burst(client: groq.Groq, calls: int) -> float:
    """CPU ms of this process per reply, `calls` replies streamed at once (every call's
    greeting after a restart, say)."""
    started = time.process_time()
    jobs = [gevent.spawn(_reply, client) for _ in range(calls)]
    gevent.joinall(jobs, raise_error=True)
    return 1e3 * (time.process_time() - started) / calls


def _spread(client: groq.Groq, calls: int, seconds: float, period: float) -> float:
    """CPU ms per reply, each call asking for one every `period` s on average, at random
    moments, for `seconds` (the voice benchmark's pattern: few replies at once, many
    connections idle in between)."""
    end = time.monotonic() + seconds
    replies = 0

    def call(rng: random.Random) -> None:
        nonlocal replies
        while True:
            gevent.sleep(rng.uniform(0, 2 * period))
            if time.monotonic() > end:
                return
            _reply(client)
            replies += 1

    started = time.process_time()
    gevent.joinall([gevent.spawn(call, random.Random(i)) for i in range(calls)], raise_error=True)
    return 1e3 * (time.process_time() - started) / max(1, replies)


def _pooled(client: groq.Groq) -> list[int]:
    # httpx's transport and httpcore's pool through their private attributes: a benchmark.
    transport = client._client._transport
    return [len(t._pool.connections) for t in getattr(transport, "transports", [transport])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="100,200")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per setup")
    parser.add_argument("--seconds", type=float, default=30.0, help="spread replies this long")
    parser.add_argument("--period", type=float, default=8.0, help="s between a call's replies")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return _serve()
    server = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.groq_pool", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    url = server.stdout.readline().strip()
    try:
        for calls in (int(c) for c in args.calls.split(",")):
            for shards in (1, args.shards):
                client = groq_client(KEY, url, shards=shards)
                spread = _spread(client, calls, args.seconds, args.period)
                pooled = _pooled(client)
                bursts = sorted(_burst(client, calls) for _ in range(args.rounds))
                after = _spread(client, calls, args.seconds, args.period)
                print(
                    f"{calls} calls, {shards:>2} pool(s): CPU per reply {spread:.2f} ms with "
                    f"a reply per call every {args.period:.0f} s (connections then: "
                    f"{sum(pooled)} in all, {max(pooled)} in the largest pool); "
                    f"{statistics.median(bursts):.2f} ms ({bursts[0]:.2f}-{bursts[-1]:.2f}) "
                    f"with all {calls} at once; {after:.2f} ms spread again after the bursts "
                    f"({max(_pooled(client))} connections in the largest pool)",
                    flush=True,
                )
    finally:
        server.stdin.close()
        server.wait(10)
    return None


if __name__ == "__main__":
    main()
