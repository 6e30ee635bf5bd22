"""The `worker` process: Dramatiq actors for post-call and background work."""
