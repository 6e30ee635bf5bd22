"""REST API, webhooks and ops endpoints (the `web` process)."""
