"""Worker-only middleware: one database session per message."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from sqlalchemy.orm import Session, sessionmaker

_session: ContextVar[Session | None] = ContextVar("message_session", default=None)


class DatabaseSession(Middleware):
    """Opens a session before each message; commits if the actor returned, else rolls back."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _session.set(self.factory())

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        session = _session.get()
        if session is None:
            return
        _session.set(None)
        try:
            if exception is None:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message, exception=RuntimeError("skipped"))


def db() -> Session:
    """The current message's session (only inside an actor)."""
    session = _session.get()
    if session is None:
        raise RuntimeError("db() is only available while an actor runs")
    return session
