"""Short-lived tokens that let one Telnyx media stream attach to one call.

Signed with SECRET_KEY (itsdangerous, HMAC-SHA256, salted for this purpose only); the
voice process accepts a stream only with an unexpired token naming an existing call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

_SALT = "switchboard.media-stream"
# Long enough to cover an outbound call ringing before it is answered.
MAX_AGE_SECONDS = 15 * 60


@dataclass(frozen=True)
class StreamGrant:
    call_id: uuid.UUID
    organization_id: uuid.UUID


def issue(secret: str, grant: StreamGrant) -> str:
    serializer = URLSafeTimedSerializer(secret, salt=_SALT)
    return serializer.dumps([str(grant.call_id), str(grant.organization_id)])


def redeem(secret: str, token: str, max_age: int = MAX_AGE_SECONDS) -> StreamGrant | None:
    """The grant, or None when the token is forged, expired or malformed."""
    serializer = URLSafeTimedSerializer(secret, salt=_SALT)
    try:
        call_id, org_id = serializer.loads(token, max_age=max_age)
        return StreamGrant(call_id=uuid.UUID(call_id), organization_id=uuid.UUID(org_id))
    except (BadSignature, ValueError, TypeError):
        return None
