"""What every provider's webhook verification raises."""


class InvalidWebhook(Exception):
    """The delivery is not provably from the provider, or not well formed: reject it and
    store nothing. The message is the reason, safe to log and to return."""
