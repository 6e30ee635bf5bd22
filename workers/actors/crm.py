"""CRM actors: log a finished call in HubSpot on its customer's contact."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

from shared.db.models import Call, Customer
from shared.providers.crm.hubspot import HubSpotClient
from shared.queue.tasks import SYNC_CALL_TO_CRM
from shared.services import crm_sync
from workers import runtime
from workers.middleware import db
from workers.registry import actor

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _client(access_token: str, api_url: str) -> HubSpotClient:
    """One client (and connection pools) per process and configuration."""
    return HubSpotClient(access_token, api_url)


@actor(SYNC_CALL_TO_CRM)
def sync_call_to_crm(call_id: str) -> None:
    settings = runtime.current().settings
    if not settings.hubspot_access_token:
        log.info("CRM not configured", extra={"call_id": call_id})
        return
    session = db()
    call = session.get(Call, uuid.UUID(call_id))
    if call is None:
        log.warning("sync_call_to_crm: no such call", extra={"call_id": call_id})
        return
    if call.crm_engagement_id:
        log.info("call already in the CRM", extra={"call_id": call_id})
        return
    customer = session.get(Customer, call.customer_id) if call.customer_id else None
    if customer is None or customer.organization_id != call.organization_id or not customer.phone:
        log.info("call has no customer with a phone: not synced", extra={"call_id": call_id})
        return
    client = _client(settings.hubspot_access_token, settings.hubspot_api_url)
    crm_sync.link_contact(session, customer, client)
    # Keep the contact link even if the engagement step fails: a retry then needs no
    # search, which could miss a contact HubSpot has not indexed yet and create another.
    session.commit()
    engagement_id = crm_sync.sync_call(session, call, client)
    log.info("call synced to the CRM", extra={"call_id": call_id, "engagement_id": engagement_id})
