"""The task queue as both sides see it: task names, broker set-up, context propagation.

The web tier enqueues by task name (it never imports workers/); workers/ registers an
actor under each name. Both build the broker here, so messages carry the same context.
"""
