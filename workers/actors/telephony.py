"""Call Control actors: answer or hang up inbound calls, dial outbound ones."""

from __future__ import annotations

import logging
import uuid

import requests

from shared.db.models import Call
from shared.providers.telephony.telnyx_call_control import TelnyxCallControl, encode_client_state
from shared.queue.tasks import CALL_CONTROL, DIAL_CALL
from shared.services import stream_tokens
from shared.services.call_status import CallStatus
from shared.services.stream_tokens import StreamGrant
from workers import runtime
from workers.middleware import db
from workers.registry import actor

log = logging.getLogger(__name__)


def _client() -> TelnyxCallControl:
    settings = runtime.current().settings
    return TelnyxCallControl(settings.telnyx_api_key or "", settings.telnyx_api_url)


def stream_url(call: Call) -> str:
    settings = runtime.current().settings
    token = stream_tokens.issue(settings.signing_key, StreamGrant(call.id, call.organization_id))
    return f"{settings.public_voice_url.rstrip('/')}/media/telnyx?token={token}"


@actor(CALL_CONTROL)
def call_control(command: str, call_control_id: str, call_id: str, argument: str = "") -> None:
    """Answer with a media stream bound to the call, hang up, or transfer to `argument`."""
    client = _client()
    if command == "hangup":
        client.hangup(call_control_id, command_id=f"{call_control_id}:hangup")
        return
    if command == "transfer":
        client.transfer(
            call_control_id, to=argument, command_id=f"{call_control_id}:transfer:{argument}"
        )
        return
    call = db().get(Call, uuid.UUID(call_id))
    if call is None or call.status not in (CallStatus.RINGING, CallStatus.QUEUED):
        log.info("answer skipped: call is gone or past ringing", extra={"call_id": call_id})
        return
    client.answer(call_control_id, stream_url=stream_url(call), command_id=f"{call.id}:answer")
    log.info("call answered", extra={"call_id": call_id})


@actor(DIAL_CALL)
def dial_call(call_id: str) -> None:
    """Place a queued outbound call; Telnyx's webhooks then drive its status."""
    call = db().get(Call, uuid.UUID(call_id), with_for_update=True)
    if call is None or call.status != CallStatus.QUEUED or call.telnyx_call_control_id:
        log.info("dial skipped: call is not queued", extra={"call_id": call_id})
        return
    settings = runtime.current().settings
    try:
        result = _client().dial(
            connection_id=settings.telnyx_connection_id or "",
            from_=call.from_number,
            to=call.to_number,
            stream_url=stream_url(call),
            client_state=encode_client_state(str(call.id)),
        )
    except requests.HTTPError as exc:  # rejected by Telnyx (4xx): retrying cannot help
        log.warning(
            "dial rejected by Telnyx",
            extra={
                "call_id": call_id,
                "status": exc.response.status_code if exc.response is not None else None,
            },
        )
        call.status = CallStatus.FAILED
        call.hangup_cause = "dial_rejected"
        return
    call.telnyx_call_control_id = call.telnyx_call_control_id or result.call_control_id
    call.telnyx_call_session_id = result.call_session_id
    call.status = CallStatus.DIALING
    log.info("call dialed", extra={"call_id": call_id})
