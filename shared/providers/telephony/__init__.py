"""Telephony: Telnyx webhooks (verification, parsing) and Call Control commands."""
