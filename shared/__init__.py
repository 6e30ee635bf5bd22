"""Switchboard's shared core: config, data layer, domain services, providers, observability."""
