"""A local Telnyx Call Control API (`/v2/calls`, `/v2/calls/{id}/actions/{cmd}`)."""

from __future__ import annotations

import re
import uuid

from scripts.fakes.http_fake import HttpFake, Recorded, Reply

_ACTION = re.compile(r"^/v2/calls/(?P<ccid>[^/]+)/actions/(?P<action>[a-z_]+)$")


def _route(recorded: Recorded) -> Reply:
    if recorded.headers.get("authorization", "") in ("", "Bearer "):
        return Reply(401, {"errors": [{"code": "10009", "title": "Authentication failed"}]})
    if recorded.method == "POST" and recorded.path == "/v2/calls":
        body = recorded.json() or {}
        missing = [k for k in ("connection_id", "from", "to") if not body.get(k)]
        if missing:
            return Reply(
                422,
                {"errors": [{"code": "10015", "title": "Invalid", "detail": f"missing {missing}"}]},
            )
        return Reply(
            200,
            {
                "data": {
                    "call_control_id": f"v3:{uuid.uuid4().hex}",
                    "call_leg_id": str(uuid.uuid4()),
                    "call_session_id": str(uuid.uuid4()),
                    "is_alive": False,
                    "record_type": "call",
                }
            },
        )
    if recorded.method == "POST" and _ACTION.match(recorded.path):
        return Reply(200, {"data": {"result": "ok"}})
    return Reply(404, {"errors": [{"code": "404", "title": "Not found"}]})


def start_fake_telnyx(port: int = 0) -> HttpFake:
    """Start a fake Telnyx API; point TELNYX_API_URL at `fake.url + "/v2"`."""
    return HttpFake(_route, port).start()


def actions(fake: HttpFake, action: str) -> list[Recorded]:
    return [r for r in fake.received("/actions/" + action, "POST")]
