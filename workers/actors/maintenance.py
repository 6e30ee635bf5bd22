"""Housekeeping actors."""

from __future__ import annotations

import logging

import dramatiq

log = logging.getLogger(__name__)


@dramatiq.actor(queue_name="maintenance", max_retries=3)
def ping(token: str) -> None:
    """Round-trip probe: proves the broker and a worker are alive (used by tests)."""
    log.info("ping", extra={"token": token})
