"""The HTTP processes: `api` (REST, webhooks, ops) and `voice` (Telnyx media streams)."""
