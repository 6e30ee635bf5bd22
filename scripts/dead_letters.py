"""List or retry dead-lettered jobs: `scripts/dead-letters [list|retry] [--queue crm]`."""

from __future__ import annotations

import argparse

from scripts.devstack import attach
from shared.config import load_settings
from shared.queue.broker import build_broker
from shared.queue.dead_letters import list_dead, requeue
from shared.queue.tasks import QUEUES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["list", "retry"], nargs="?", default="list")
    parser.add_argument("--queue", choices=QUEUES, action="append", help="default: every queue")
    args = parser.parse_args()
    broker = build_broker(attach(load_settings()))
    total = 0
    for queue in args.queue or QUEUES:
        for letter in list_dead(broker, queue):
            total += 1
            msg = letter.message
            line = f"{queue:10} {msg.message_id} {msg.actor_name:18} {msg.args}"
            if args.action == "retry":
                line += f" -> requeued as {requeue(broker, letter)}"
            print(line)
    print(f"{total} dead letter(s){' requeued' if args.action == 'retry' and total else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
