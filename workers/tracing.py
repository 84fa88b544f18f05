"""The worker's part of a task's trace: queue wait and run spans, ``traceparent`` on its events.

For each attempt it starts (docs/decisions.md, D22):

* ``taskstream.queue_wait``: from the dispatch (the ready record's time) to the
  start here, a span that already happened when it is recorded;
* ``taskstream.run``: the handler, from start to outcome. It is the current span
  while the handler runs, so the handler's own spans are its children (a
  coroutine runs in a copy of the worker's context with it attached; a thread
  handler gets that copy too, see pools.py). Its outcome is its status.

Both hang under the dispatch span: the ``traceparent`` of the ready record when
it is in the task's trace, else the dispatch span named by the task ID and
dispatch id (context.py). The worker's events for the attempt (TaskStarted,
LeaseRenewed, TaskSucceeded, TaskFailed) carry the run span's ``traceparent``, so
what the processor does with an outcome (a retry, a dead letter) hangs under the
run that caused it. Off: the worker checks ``enabled`` once per attempt.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from taskstream.schemas.events import Envelope, TaskDispatched
from taskstream.telemetry.context import (
    TraceContext,
    dispatch_context,
    parent_in_task,
)
from taskstream.telemetry.tracing import OFF, Telemetry, Traced, context_of, link_to
from taskstream.workers.outcome import Failure, Outcome

Headers = list[tuple[str, str | bytes | None]]


@dataclass(slots=True)
class AttemptTrace:
    """The run span of one attempt and the headers its events carry."""

    span: Span
    headers: Headers

    def handler_context(self) -> contextvars.Context:
        """A copy of the current context with the run span current: the handler's."""
        ctx = contextvars.copy_context()
        ctx.run(otel_context.attach, trace.set_span_in_context(self.span))
        return ctx


class AttemptTracing(Traced):
    """Spans for the attempts one worker runs."""

    def __init__(self, telemetry: Telemetry = OFF, worker_id: str = "") -> None:
        super().__init__(telemetry)
        self.worker_id = worker_id

    def begin(self, envelope: Envelope, dispatched: TaskDispatched, topic: str,
              carried: TraceContext | None) -> AttemptTrace:
        """Record the queue wait and start the run span of an attempt starting now."""
        task_id = envelope.task_id
        parent, foreign = parent_in_task(
            task_id, carried, dispatch_context(task_id, dispatched.dispatch_id,
                                               self.telemetry.ratio))
        links = [link_to(foreign, relation="carried")] if foreign is not None else []
        # few attributes: the SDK checks each one and the exporter encodes each one, per
        # span (the trace already says which task; the run span says the rest)
        now_ns = time.time_ns()
        dispatched_ns = envelope.occurred_at_ms * 1_000_000
        self.telemetry.record("taskstream.queue_wait", start_ns=min(dispatched_ns, now_ns),
                              end_ns=now_ns, parent=parent, links=links,
                              attributes={"taskstream.queue": dispatched.queue})
        span = self.telemetry.start("taskstream.run", parent=parent, kind=SpanKind.CONSUMER,
                                    start_ns=now_ns, links=links, attributes={
                                        "taskstream.task_id": task_id,
                                        "taskstream.attempt": envelope.attempt,
                                        "taskstream.queue": dispatched.queue,
                                        "taskstream.task_name": dispatched.name,
                                        "taskstream.dispatch_id": dispatched.dispatch_id,
                                        "taskstream.worker_id": self.worker_id,
                                        "messaging.destination.name": topic})
        run = context_of(span)
        return AttemptTrace(span, [run.header()] if run is not None else [])

    @staticmethod
    def end(attempt: AttemptTrace, outcome: Outcome | None) -> None:
        """End the run span with the attempt's outcome (None: interrupted, no outcome)."""
        span = attempt.span
        if outcome is None:
            span.set_attribute("taskstream.outcome", "interrupted")
            span.set_status(Status(StatusCode.ERROR, "interrupted: the lease recovers it"))
        elif isinstance(outcome, Failure):
            span.set_attribute("taskstream.outcome", "failed")
            span.set_attribute("error.type", outcome.error_type)
            span.set_attribute("taskstream.retryable", outcome.retryable)
            span.set_status(Status(StatusCode.ERROR, f"{outcome.error_type}: {outcome.message}"))
        else:
            span.set_attribute("taskstream.outcome", "succeeded")
        span.end()
