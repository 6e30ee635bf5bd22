"""Webhooks: no JWT, the signature is the authentication, verified before the body is parsed.

Each provider module has one blueprint; every route is served under /webhooks and, for
clients that keep the API prefix, under /api/v1/webhooks as well.
"""
