"""Domain services: every rule and every query the processes need. Callers own the session."""
