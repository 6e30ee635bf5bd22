"""Billing: Stripe webhooks (verification, parsing)."""
