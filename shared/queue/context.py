"""Request id and trace context travel inside each message and are restored around the actor."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from shared.observability.logging import request_id

_tracer = trace.get_tracer("switchboard.queue")
# Per worker thread: the span and context tokens of the message being processed. Not kept
# in message.options, which Retries re-encodes when it re-enqueues the message.
_active: ContextVar[tuple[Any, Token[Any], Token[str | None]] | None] = ContextVar(
    "active_message_context", default=None
)


class ContextPropagation(Middleware):
    """Enqueue side: copy the current request id and trace context into message options.
    Worker side: restore them, and wrap the actor in a span that continues the trace."""

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int
    ) -> None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        message.options.setdefault("request_id", request_id.get())
        message.options.setdefault("trace", carrier)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        parent = propagate.extract(message.options.get("trace") or {})
        span = _tracer.start_span(f"actor {message.actor_name}", context=parent)
        span.set_attribute("messaging.message.id", message.message_id)
        span.set_attribute("messaging.destination.name", message.queue_name)
        _active.set(
            (
                span,
                otel_context.attach(trace.set_span_in_context(span, parent)),
                request_id.set(message.options.get("request_id") or message.message_id),
            )
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        active = _active.get()
        if active is None:
            return
        _active.set(None)
        span, otel_token, rid_token = active
        if exception is not None:
            span.record_exception(exception)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end()
        otel_context.detach(otel_token)
        request_id.reset(rid_token)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)
