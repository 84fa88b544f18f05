"""The processor's part of a task's trace: a span per dispatch, retry, dead letter, refusal.

The live fold calls :meth:`FoldTracing.effect` for each effect it performs, with
the envelope and the Kafka headers of the record that caused it, and puts the
headers it returns on the outbound record (docs/decisions.md, D22):

* ``Dispatch`` -> ``taskstream.dispatch`` (span id derived from the task ID and the
  dispatch id: a worker finds it without headers), from the cause's time to now;
  the ready record carries its ``traceparent``;
* ``RetryScheduled`` -> ``taskstream.retry``, from the failure to the time the
  next attempt is due, under the failed run (the TaskFailed's ``traceparent``) or,
  after a lease expiry, under the expired dispatch; the next attempt's dispatch
  hangs under it (the RETRY_DUE timer names it), so attempts chain in one trace;
* ``DeadLetter``, ``PublishCancel``, ``Rejected``, ``Duplicate`` -> a span of that
  name under whatever caused it (a fenced outcome shows under the run that sent it);
  the dlq and cancellations records carry their span's ``traceparent``.

The parent is the cause's ``traceparent`` when it is in the task's trace, else
the span the cause implies (telemetry/context.py): a retry timer -> that retry, a
lease timer -> that dispatch, anything else -> the submit (the trace's root).
:meth:`FoldTracing.timer_headers` gives a timer event the same context, so the
record that comes back through the events topic carries it.

Off (no ``TASKSTREAM_OTLP_ENDPOINT``), ``enabled`` is False and the fold must not
call anything here: one attribute check per batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from opentelemetry.trace import Link, SpanKind

from taskstream.processors.fold import effects as fx
from taskstream.schemas import events as ev
from taskstream.telemetry.context import (
    Header,
    TraceContext,
    dispatch_context,
    from_headers,
    parent_in_task,
    retry_context,
    submit_context,
    task_trace_id,
)
from taskstream.telemetry.tracing import Traced, link_to

#: what confluent-kafka's produce() takes as headers
OutHeaders = list[tuple[str, str | bytes | None]]
RecordHeaders = Iterable[Header] | Mapping[str, bytes | str | None] | None

_WORKER_EVENTS = (ev.TaskStarted, ev.LeaseRenewed, ev.TaskSucceeded, ev.TaskFailed)


class FoldTracing(Traced):
    """Spans for what one processor replica does; headers for what it sends."""

    # -- where a span hangs -----------------------------------------------------------

    def implied_parent(self, cause: ev.Envelope) -> TraceContext:
        """The span a cause stands for when its record carried no usable traceparent."""
        task_id, ratio, body = cause.task_id, self.telemetry.ratio, cause.body
        if isinstance(body, ev.TimerFired):
            if body.kind == ev.TimerKind.RETRY_DUE:
                return retry_context(task_id, cause.attempt, ratio)
            if body.kind == ev.TimerKind.LEASE_EXPIRED and body.dispatch_id:
                return dispatch_context(task_id, body.dispatch_id, ratio)
        elif isinstance(body, _WORKER_EVENTS) and body.dispatch_id:
            return dispatch_context(task_id, body.dispatch_id, ratio)
        return submit_context(task_id, ratio)

    def parent_of(self, cause: ev.Envelope, headers: RecordHeaders
                  ) -> tuple[TraceContext, list[Link]]:
        carried = from_headers(headers)
        if carried is not None and carried.trace_id == task_trace_id(cause.task_id):
            return carried, []  # the usual case: the implied parent is not needed
        parent, foreign = parent_in_task(cause.task_id, carried, self.implied_parent(cause))
        return parent, [link_to(foreign, relation="carried")] if foreign is not None else []

    # -- the entry points -----------------------------------------------------------------

    def effect(self, effect: fx.Effect, cause: ev.Envelope, headers: RecordHeaders = None
               ) -> OutHeaders | None:
        """Record the span of one effect; the headers of its outbound record, if it has one.

        ``cause``: the envelope of the events-topic record that caused the effect;
        ``headers``: that record's Kafka headers (None when not at hand: the parent is
        then the span the cause implies, and the trace still joins)."""
        match effect:
            case fx.Dispatch(envelope=env):
                return self._dispatch(env, cause, headers)
            case fx.RetryScheduled(delay_ms=delay_ms):
                self._retry(cause, headers, delay_ms)
                return None
            case fx.DeadLetter(envelope=env):
                body = env.body
                error = body.error_type if isinstance(body, ev.TaskDeadLettered) else ""
                return self._mark("taskstream.dead_letter", cause, headers,
                                  {"error.type": error}, error=f"dead: {error}")
            case fx.PublishCancel():
                return self._mark("taskstream.cancel", cause, headers, {})
            case fx.Rejected(reason=reason):
                self._mark("taskstream.rejected", cause, headers, {"taskstream.reason": reason})
                return None
            case fx.Duplicate(conflict=conflict):
                self._mark("taskstream.duplicate", cause, headers,
                           {"taskstream.conflict": conflict})
                return None
            case _:
                return None

    def timer_headers(self, task_id: str, kind: ev.TimerKind, attempt: int,
                      dispatch_id: str) -> OutHeaders:
        """The traceparent of a TimerFired event the processor writes to the events topic."""
        ratio = self.telemetry.ratio
        if kind == ev.TimerKind.RETRY_DUE:
            ctx = retry_context(task_id, attempt, ratio)
        elif kind == ev.TimerKind.LEASE_EXPIRED and dispatch_id:
            ctx = dispatch_context(task_id, dispatch_id, ratio)
        else:
            ctx = submit_context(task_id, ratio)
        return [ctx.header()]

    # -- the spans ----------------------------------------------------------------------

    def _attributes(self, cause: ev.Envelope) -> dict[str, str | int | bool]:
        return {"taskstream.task_id": cause.task_id, "taskstream.attempt": cause.attempt,
                "taskstream.cause": cause.type_name}

    def _dispatch(self, env: ev.Envelope, cause: ev.Envelope, headers: RecordHeaders
                  ) -> OutHeaders:
        body = env.body
        assert isinstance(body, ev.TaskDispatched)
        ctx = dispatch_context(env.task_id, body.dispatch_id, self.telemetry.ratio)
        parent, links = self.parent_of(cause, headers)
        now = time.time_ns()
        # few attributes, on the fold's path: the SDK checks and the exporter encodes each
        # one per span (the trace says which task; its submit and run spans say the rest)
        self.telemetry.record(
            "taskstream.dispatch", start_ns=min(cause.occurred_at_ms * 1_000_000, now),
            end_ns=now, parent=parent, span_id=ctx.span_id, kind=SpanKind.PRODUCER,
            links=links, attributes={
                "taskstream.attempt": env.attempt, "taskstream.dispatch_id": body.dispatch_id,
                "taskstream.queue": body.queue, "taskstream.priority": body.priority,
                "taskstream.cause": cause.type_name})
        return [ctx.header()]

    def _retry(self, cause: ev.Envelope, headers: RecordHeaders, delay_ms: int) -> None:
        ctx = retry_context(cause.task_id, cause.attempt, self.telemetry.ratio)
        parent, links = self.parent_of(cause, headers)
        start = cause.occurred_at_ms * 1_000_000
        body = cause.body
        reason = body.error_type if isinstance(body, ev.TaskFailed) else cause.type_name
        self.telemetry.record(
            "taskstream.retry", start_ns=start, end_ns=start + delay_ms * 1_000_000,
            parent=parent, span_id=ctx.span_id, links=links, attributes={
                **self._attributes(cause), "taskstream.delay_ms": delay_ms,
                "taskstream.reason": reason})

    def _mark(self, name: str, cause: ev.Envelope, headers: RecordHeaders,
              attributes: Mapping[str, str | int | bool], error: str | None = None
              ) -> OutHeaders | None:
        parent, links = self.parent_of(cause, headers)
        now = time.time_ns()
        ctx = self.telemetry.record(name, start_ns=now, end_ns=now, parent=parent, links=links,
                                    attributes={**self._attributes(cause), **attributes},
                                    error=error)
        return [ctx.header()] if ctx is not None else None
