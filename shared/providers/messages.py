"""Decoding the JSON messages of the providers' websockets (Deepgram's results, Cartesia's
audio) ourselves, with orjson, where the SDKs would build a pure-Python model of each."""

from __future__ import annotations

import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)


def json_object(raw: str | bytes, provider: str) -> dict[str, Any] | None:
    """`raw` decoded, or None (with a warning) when it is not a JSON object: a message
    the reader skips, not one that ends the stream."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        log.warning("%s sent a message that is not a JSON object; ignored", provider)
        return None
    return message
