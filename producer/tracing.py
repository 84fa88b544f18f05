"""The client's part of a task's trace: the submit span, and ``traceparent`` on its events.

A submitted task's trace starts here (docs/decisions.md, D22): the root span
``taskstream.submit`` has the task ID as trace id and a span id derived from it,
and the TaskSubmitted record carries it in a ``traceparent`` header. A span the
caller has open (its own request, say) is linked, not made the parent: the task's
trace is the task's. Each ``depends_on`` task is linked too (its submit span is
named by its ID alone). Cancel and redrive requests carry the task's root context
and get a span of their own in the task's trace.

With tracing off (:data:`~taskstream.telemetry.tracing.OFF`) the producer checks
``enabled`` once per call and does nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry.trace import Link, SpanKind

from taskstream.telemetry.context import TraceContext, submit_context
from taskstream.telemetry.tracing import OFF, Telemetry, Traced, current_context, link_to

Headers = list[tuple[str, str | bytes | None]]


class SubmitTracing(Traced):
    """Spans and headers for one producer's events."""

    def __init__(self, telemetry: Telemetry = OFF, topic: str = "") -> None:
        super().__init__(telemetry)
        self.topic = topic

    def root(self, task_id: str) -> TraceContext:
        return submit_context(task_id, self.telemetry.ratio)

    def headers(self, task_id: str) -> Headers:
        """The record headers of any client event about ``task_id``."""
        return [self.root(task_id).header()]

    def submitted(self, task_id: str, name: str, start_ns: int, *, queue: str | None = None,
                  depends_on: Iterable[str] = (), caller: TraceContext | None = None) -> None:
        """The root span of a task just handed to the Kafka client; ``caller`` (default: the
        current span) is linked."""
        links = self._caller_links(caller)
        links += [link_to(self.root(parent), relation="depends_on") for parent in depends_on]
        root = self.root(task_id)
        attributes: dict[str, str | int] = {
            "taskstream.task_id": task_id, "taskstream.task_name": name,
            "messaging.system": "kafka", "messaging.destination.name": self.topic,
            "messaging.operation.type": "send"}
        if queue:
            attributes["taskstream.queue"] = queue
        self.telemetry.record("taskstream.submit", start_ns=start_ns, end_ns=time.time_ns(),
                              trace_id=root.trace_id, span_id=root.span_id,
                              kind=SpanKind.PRODUCER, attributes=attributes, links=links)

    def submitted_many(self, task_ids: Iterable[str], start_ns: int) -> None:
        """One root span per task of a submit_many (each task is its own trace)."""
        links = self._caller_links()
        end_ns = time.time_ns()
        for task_id in task_ids:
            root = self.root(task_id)
            self.telemetry.record(
                "taskstream.submit", start_ns=start_ns, end_ns=end_ns, trace_id=root.trace_id,
                span_id=root.span_id, kind=SpanKind.PRODUCER, links=links,
                attributes={"taskstream.task_id": task_id, "messaging.system": "kafka",
                            "messaging.destination.name": self.topic,
                            "messaging.operation.type": "send", "taskstream.batch": True})

    def requested(self, task_id: str, event: str, start_ns: int) -> None:
        """A cancel or redrive request: a span under the task's root."""
        self.telemetry.record(
            f"taskstream.{event}", start_ns=start_ns, end_ns=time.time_ns(),
            parent=self.root(task_id), kind=SpanKind.PRODUCER, links=self._caller_links(),
            attributes={"taskstream.task_id": task_id, "taskstream.event": event})

    @staticmethod
    def _caller_links(caller: TraceContext | None = None) -> list[Link]:
        caller = caller or current_context()
        return [link_to(caller, relation="caller")] if caller is not None else []
