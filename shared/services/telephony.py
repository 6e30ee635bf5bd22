"""What Telnyx call events mean for our calls: the inbound/outbound call lifecycle.

`apply_event` changes rows and returns what must happen next (commands to send, post-call
work to start); the web tier queues those after its commit. Events may arrive late,
twice or out of order: a transition the status machine forbids is logged and skipped.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from shared.db.models import Call, Customer
from shared.providers.telephony.telnyx_call_control import decode_client_state
from shared.providers.telephony.telnyx_webhooks import TelnyxEvent
from shared.services import phone_numbers
from shared.services.call_status import CallStatus, can_move

log = logging.getLogger(__name__)
S = CallStatus


class Command(StrEnum):
    ANSWER = "answer"
    HANGUP = "hangup"


@dataclass(frozen=True)
class Order:
    """A Call Control command to send for a call (call_id None: a call we refused)."""

    command: Command
    call_control_id: str
    call_id: uuid.UUID | None = None


@dataclass
class Effects:
    organization_id: uuid.UUID | None = None
    call_id: uuid.UUID | None = None
    orders: list[Order] = field(default_factory=list)
    finished: bool = False  # the call just ended: start the post-call work


# hangup_cause → final status when the call was never answered.
UNANSWERED_END = {
    "user_busy": S.BUSY,
    "no_answer": S.NO_ANSWER,
    "timeout": S.NO_ANSWER,
    "originator_cancel": S.CANCELED,
}


Linked = tuple[uuid.UUID, uuid.UUID]


def apply_event(session: Session, event: TelnyxEvent, linked: Linked | None) -> Effects:
    """`linked`: the (organization, call) the stored event was matched to by its
    call_control_id when it was recorded, None if no call has that id (yet). Events that
    change nothing (streaming.started, call.cost, …) need no more than that: no second
    lookup, no row lock; nor does a new inbound call need a lookup to know it is new."""
    if event.type == "call.initiated":
        return _initiated(session, event, linked)
    handler = _HANDLERS.get(event.type)
    if handler is None:
        return Effects(*linked) if linked else _effects(_find_call(session, event))
    return handler(session, event)


def _initiated(session: Session, event: TelnyxEvent, linked: Linked | None) -> Effects:
    if event.payload.get("direction") == "outgoing":
        call = _find_call(session, event)
        if call is not None:
            _move(call, S.RINGING, event)
        return _effects(call)
    if linked is not None:  # the same call announced again (a redelivery with a new id)
        return Effects(*linked)
    return _inbound(session, event)


def _inbound(session: Session, event: TelnyxEvent) -> Effects:
    ccid = event.call_control_id
    if not ccid:
        log.warning("call.initiated without call_control_id", extra={"event_id": event.id})
        return Effects()
    route = phone_numbers.route(session, str(event.payload.get("to", "")))
    if route is None:
        log.info(
            "inbound call to an unknown number: hanging up", extra={"to": event.payload.get("to")}
        )
        return Effects(orders=[Order(Command.HANGUP, ccid)])
    caller = str(event.payload.get("from", ""))
    call_id = uuid.uuid4()
    session.execute(
        _NEW_INBOUND_CALL,
        {
            "id": call_id,
            "organization_id": route.organization_id,
            "agent_id": route.agent_id,
            "customer_id": _customer_for(session, route.organization_id, caller),
            "from_number": caller,
            "to_number": route.number,
            "ccid": ccid,
            "session_id": event.payload.get("call_session_id"),
        },
    )
    return Effects(route.organization_id, call_id, [Order(Command.ANSWER, ccid, call_id)])


def _answered(session: Session, event: TelnyxEvent) -> Effects:
    call = _locked_row(session, event)
    if call is not None and _may_move(call.id, call.status, S.IN_PROGRESS, event):
        session.execute(
            _ANSWERED,
            {"call_id": call.id, "answered_at": event.occurred_at or _now(), "now": _now()},
        )
    return _row_effects(call)


def _hangup(session: Session, event: TelnyxEvent) -> Effects:
    call = _locked_row(session, event)
    if call is None:
        return Effects()
    cause = str(event.payload.get("hangup_cause") or "unspecified")
    answered = call.status == S.IN_PROGRESS
    final = S.COMPLETED if answered else UNANSWERED_END.get(cause, S.FAILED)
    if not _may_move(call.id, call.status, final, event):
        return _row_effects(call)
    ended = event.occurred_at or _now()
    duration = max(0.0, (ended - call.answered_at).total_seconds()) if call.answered_at else 0.0
    session.execute(
        _ENDED,
        {
            "call_id": call.id,
            "status": final,
            "cause": cause,
            "ended_at": ended,
            "duration": duration,
            "now": _now(),
        },
    )
    effects = _row_effects(call)
    effects.finished = True
    return effects


def _machine_detected(session: Session, event: TelnyxEvent) -> Effects:
    call = _find_call(session, event)
    if call is not None:
        call.machine_detection = str(event.payload.get("result") or "not_sure")
    return _effects(call)


def _recording_saved(session: Session, event: TelnyxEvent) -> Effects:
    call = _find_call(session, event)
    if call is not None:
        urls = (
            event.payload.get("public_recording_urls") or event.payload.get("recording_urls") or {}
        )
        call.recording_url = urls.get("mp3") or urls.get("wav") or call.recording_url
    return _effects(call)


def _streaming_failed(session: Session, event: TelnyxEvent) -> Effects:
    call = _find_call(session, event)
    log.warning(
        "media stream failed",
        extra={
            "call_id": str(call.id) if call else None,
            "reason": event.payload.get("failure_reason"),
        },
    )
    return _effects(call)


_HANDLERS = {
    "call.answered": _answered,
    "call.hangup": _hangup,
    "call.machine.detection.ended": _machine_detected,
    "call.machine.premium.detection.ended": _machine_detected,
    "call.recording.saved": _recording_saved,
    "streaming.failed": _streaming_failed,
}


# Every event looks its call up: the statements are built (and their cache keys computed)
# once, not per event.
_CALL_BY_CCID = (
    select(Call).where(Call.telnyx_call_control_id == bindparam("ccid")).with_for_update()
)
_CALL_BY_SESSION = (
    select(Call).where(Call.telnyx_call_session_id == bindparam("session_id")).with_for_update()
)
_CUSTOMERS = cast(Table, Customer.__table__)
_CUSTOMER_BY_PHONE = select(_CUSTOMERS.c.id).where(
    _CUSTOMERS.c.organization_id == bindparam("organization_id"),
    _CUSTOMERS.c.phone == bindparam("phone"),
)
_NEW_CUSTOMER = (
    pg_insert(_CUSTOMERS)
    .values(
        id=bindparam("id"),
        organization_id=bindparam("organization_id"),
        phone=bindparam("phone"),
    )
    .on_conflict_do_nothing(constraint="uq_customers_org_phone")
    .returning(_CUSTOMERS.c.id)
)


@dataclass(frozen=True)
class _CallRow:
    """What the answered/hang-up handlers read of a call, locked for the transaction."""

    id: uuid.UUID
    organization_id: uuid.UUID
    status: str
    answered_at: datetime | None


_CALLS = cast(Table, Call.__table__)
# The two commonest lifecycle events read four columns and write with one UPDATE (Core,
# built once): loading the whole Call into the ORM and flushing it cost about as much as
# the rest of the webhook.
_ROW_BY_CCID = (
    select(_CALLS.c.id, _CALLS.c.organization_id, _CALLS.c.status, _CALLS.c.answered_at)
    .where(_CALLS.c.telnyx_call_control_id == bindparam("ccid"))
    .with_for_update()
)
_ANSWERED = (
    update(_CALLS)
    .where(_CALLS.c.id == bindparam("call_id"))
    .values(
        status=S.IN_PROGRESS.value,
        answered_at=bindparam("answered_at"),
        updated_at=bindparam("now"),
    )
)
_ENDED = (
    update(_CALLS)
    .where(_CALLS.c.id == bindparam("call_id"))
    .values(
        status=bindparam("status"),
        hangup_cause=bindparam("cause"),
        ended_at=bindparam("ended_at"),
        duration_seconds=bindparam("duration"),
        updated_at=bindparam("now"),
    )
)


_NEW_INBOUND_CALL = insert(_CALLS).values(
    id=bindparam("id"),
    organization_id=bindparam("organization_id"),
    agent_id=bindparam("agent_id"),
    customer_id=bindparam("customer_id"),
    direction="inbound",
    from_number=bindparam("from_number"),
    to_number=bindparam("to_number"),
    status=S.RINGING.value,
    telnyx_call_control_id=bindparam("ccid"),
    telnyx_call_session_id=bindparam("session_id"),
)


def _locked_row(session: Session, event: TelnyxEvent) -> _CallRow | None:
    if event.call_control_id:
        row = session.execute(_ROW_BY_CCID, {"ccid": event.call_control_id}).first()
        if row is not None:
            return _CallRow(*row)
    call = _find_call(session, event, ccid_tried=True)
    if call is None:
        return None
    session.flush()  # a call matched by client_state just got its call_control_id
    return _CallRow(call.id, call.organization_id, call.status, call.answered_at)


def _row_effects(call: _CallRow | None) -> Effects:
    return Effects(call.organization_id, call.id) if call else Effects()


def _find_call(session: Session, event: TelnyxEvent, *, ccid_tried: bool = False) -> Call | None:
    """By call_control_id; else by our call id in client_state (an outbound call whose
    dial response has not been stored yet); else by call session (recording events)."""
    ccid = event.call_control_id
    if ccid and not ccid_tried:
        call = session.scalar(_CALL_BY_CCID, {"ccid": ccid})
        if call is not None:
            return call
    call = _by_client_state(session, event)
    if call is None and event.payload.get("call_session_id"):
        call = session.scalar(_CALL_BY_SESSION, {"session_id": event.payload["call_session_id"]})
    return call


def _by_client_state(session: Session, event: TelnyxEvent) -> Call | None:
    raw = decode_client_state(event.payload.get("client_state"))
    try:
        call_id = uuid.UUID(raw) if raw else None
    except ValueError:
        return None
    call = session.get(Call, call_id, with_for_update=True) if call_id else None
    if call is None:
        return None
    ccid = event.call_control_id
    if call.telnyx_call_control_id and ccid and call.telnyx_call_control_id != ccid:
        log.warning(
            "client_state names a call of another leg: ignored", extra={"call_id": str(call.id)}
        )
        return None
    if ccid and not call.telnyx_call_control_id:
        call.telnyx_call_control_id = ccid
        call.telnyx_call_session_id = event.payload.get("call_session_id")
    return call


def _move(call: Call, target: CallStatus, event: TelnyxEvent) -> bool:
    if not _may_move(call.id, call.status, target, event):
        return False
    call.status = target
    call.updated_at = _now()
    return True


def _may_move(call_id: uuid.UUID, current: str, target: CallStatus, event: TelnyxEvent) -> bool:
    """Whether the event moves the call to `target`; a forbidden move is logged, skipped."""
    if current == target:
        return False
    if not can_move(current, target):
        log.info(
            "event ignored: illegal status transition",
            extra={
                "call_id": str(call_id),
                "from": current,
                "to": str(target),
                "event": event.type,
            },
        )
        return False
    return True


def _customer_for(session: Session, organization_id: uuid.UUID, phone: str) -> uuid.UUID | None:
    """The tenant's customer with this phone, created on first call so memory can build up."""
    if not phone.startswith("+"):
        return None
    key = {"organization_id": organization_id, "phone": phone}
    found: uuid.UUID | None = session.scalar(_CUSTOMER_BY_PHONE, key)
    if found is None:  # a new caller; a concurrent first call may create them meanwhile
        found = session.scalar(_NEW_CUSTOMER, {**key, "id": uuid.uuid4()})
    if found is None:
        found = session.scalar(_CUSTOMER_BY_PHONE, key)
    return found


def _effects(call: Call | None) -> Effects:
    return Effects(call.organization_id, call.id) if call else Effects()


def _now() -> datetime:
    return datetime.now(UTC)
