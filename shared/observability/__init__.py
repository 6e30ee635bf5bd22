"""Logging, metrics and tracing set-up: one of each per process."""
