"""Domain errors. The web tier maps each to one problem+json status; nothing else does."""

from __future__ import annotations


class DomainError(Exception):
    """Base: `title` names the problem, the message gives the detail."""

    title = "Error"


class NotFound(DomainError):
    title = "Not Found"

    def __init__(self, resource: str) -> None:
        super().__init__(f"{resource} not found")


class Conflict(DomainError):
    title = "Conflict"


class InvalidTransition(Conflict):
    title = "Illegal status transition"


class Unauthorized(DomainError):
    title = "Unauthorized"


class PaymentRequired(DomainError):
    title = "Payment Required"


class InvalidInput(DomainError):
    """Input that passed schema validation but breaks a domain rule, tied to one field."""

    title = "Unprocessable Content"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
