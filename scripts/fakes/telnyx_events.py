"""Telnyx-side webhook deliveries: envelopes as Telnyx sends them, signed with Ed25519."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey


class TelnyxSigner:
    """Holds a key pair; `public_key` is what TELNYX_PUBLIC_KEY must be set to."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self.key = key or SigningKey.generate()

    @property
    def public_key(self) -> str:
        return base64.b64encode(bytes(self.key.verify_key)).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(ts.encode() + b"|" + body).signature
        return {
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": ts,
            "Content-Type": "application/json",
        }


def load_or_create_signer(path: Path) -> TelnyxSigner:
    """The local key pair scripts/run and scripts/simulate-call share (private key 0600)."""
    if path.exists():
        return TelnyxSigner(SigningKey(base64.b64decode(path.read_text().strip())))
    signer = TelnyxSigner()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base64.b64encode(bytes(signer.key)).decode())
    path.chmod(0o600)
    return signer


def envelope(event_type: str, payload: dict[str, Any], event_id: str | None = None) -> bytes:
    body = {
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": event_id or str(uuid.uuid4()),
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "payload": {"connection_id": "fake-connection", **payload},
        },
        "meta": {"attempt": 1, "delivered_to": "http://127.0.0.1/webhooks/telnyx"},
    }
    return json.dumps(body).encode()


def call_payload(
    call_control_id: str, *, from_: str, to: str, direction: str = "incoming", **extra: Any
) -> dict[str, Any]:
    return {
        "call_control_id": call_control_id,
        "call_leg_id": str(uuid.uuid4()),
        "call_session_id": f"session-{call_control_id}",
        "from": from_,
        "to": to,
        "direction": direction,
        "state": "parked" if direction == "incoming" else "bridging",
        "client_state": None,
        **extra,
    }
