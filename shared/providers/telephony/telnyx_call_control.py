"""Telnyx Call Control v2 over plain HTTP (requests), every call through the resilience guard.

Commands carry a `command_id` derived from our call id, so a retried command is ignored
by Telnyx within its 60 s dedup window instead of being applied twice.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from shared.resilience import guard

# What the voice process speaks: 8 kHz PCMU both ways, caller audio only inbound.
STREAMING = {
    "stream_track": "inbound_track",
    "stream_bidirectional_mode": "rtp",
    "stream_bidirectional_codec": "PCMU",
}
CALL_ALREADY_ENDED = "90018"


@dataclass(frozen=True)
class DialResult:
    call_control_id: str
    call_leg_id: str | None
    call_session_id: str | None


class TelnyxCallControl:
    def __init__(
        self, api_key: str, base_url: str, session: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = session or requests.Session()
        self.http.headers.update(
            {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        )

    def answer(
        self,
        call_control_id: str,
        *,
        stream_url: str,
        command_id: str,
        client_state: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"stream_url": stream_url, **STREAMING, "command_id": command_id}
        if client_state:
            body["client_state"] = client_state
        self._action(call_control_id, "answer", body)

    def hangup(self, call_control_id: str, *, command_id: str) -> None:
        """Hang up; a call that already ended counts as done."""
        try:
            self._action(call_control_id, "hangup", {"command_id": command_id})
        except requests.HTTPError as exc:
            if not _already_ended(exc):
                raise

    def speak(
        self, call_control_id: str, *, text: str, voice: str, language: str, command_id: str
    ) -> None:
        body = {"payload": text, "voice": voice, "language": language, "command_id": command_id}
        self._action(call_control_id, "speak", body)

    def transfer(
        self, call_control_id: str, *, to: str, command_id: str, from_: str | None = None
    ) -> None:
        body: dict[str, Any] = {"to": to, "command_id": command_id}
        if from_:
            body["from"] = from_
        self._action(call_control_id, "transfer", body)

    def start_streaming(self, call_control_id: str, *, stream_url: str, command_id: str) -> None:
        self._action(
            call_control_id,
            "streaming_start",
            {"stream_url": stream_url, **STREAMING, "command_id": command_id},
        )

    def stop_streaming(self, call_control_id: str, *, command_id: str) -> None:
        self._action(call_control_id, "streaming_stop", {"command_id": command_id})

    def dial(
        self,
        *,
        connection_id: str,
        from_: str,
        to: str,
        stream_url: str,
        client_state: str,
        timeout_secs: int = 60,
    ) -> DialResult:
        body = {
            "connection_id": connection_id,
            "from": from_,
            "to": to,
            "stream_url": stream_url,
            **STREAMING,
            "client_state": client_state,
            "timeout_secs": timeout_secs,
        }
        data = self._post("/calls", body)["data"]
        return DialResult(
            data["call_control_id"], data.get("call_leg_id"), data.get("call_session_id")
        )

    def _action(self, call_control_id: str, action: str, body: dict[str, Any]) -> None:
        # call_control_id values look like "v3:AbC..." and go into the path escaped.
        self._post(f"/calls/{quote(call_control_id, safe='')}/actions/{action}", body)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        def attempt(timeout: float) -> dict[str, Any]:
            response = self.http.post(self.base_url + path, json=body, timeout=timeout)
            response.raise_for_status()
            return response.json() if response.content else {}

        return guard("telnyx").call(attempt)


def encode_client_state(value: str) -> str:
    """Telnyx requires client_state to be base64; it comes back in every later webhook."""
    return base64.b64encode(value.encode()).decode()


def decode_client_state(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _already_ended(exc: requests.HTTPError) -> bool:
    response = exc.response
    if response is None or response.status_code != 422:
        return False
    try:
        errors = response.json().get("errors", [])
    except ValueError:
        return False
    return any(str(err.get("code")) == CALL_ALREADY_ENDED for err in errors)
