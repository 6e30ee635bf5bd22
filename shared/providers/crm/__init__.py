"""CRM: HubSpot contacts and call engagements (official SDK) and HubSpot webhook verification."""
