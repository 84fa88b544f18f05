"""Tracing without a broker: ids derived from the task, W3C headers, and the spans each part
records (through the real OpenTelemetry SDK into its in-memory exporter)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from opentelemetry.trace import StatusCode
from ulid import ULID

from taskstream.processors.fold.effects import DeadLetter, Dispatch, Rejected, RetryScheduled
from taskstream.processors.fold.lifecycle import Limits
from taskstream.processors.fold.validate import Checks
from taskstream.processors.live.batch import fold_partition
from taskstream.processors.live.engine import trace_effects
from taskstream.processors.tracing import FoldTracing
from taskstream.producer.tracing import SubmitTracing
from taskstream.schemas.events import Envelope, TaskDispatched, TaskFailed, TimerFired, TimerKind
from taskstream.schemas.ids import derived_task_id, new_task_id
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings
from taskstream.telemetry.context import (
    TRACEPARENT,
    TraceContext,
    dispatch_context,
    from_headers,
    parse_traceparent,
    retry_context,
    sampled_by_ratio,
    submit_context,
    task_trace_hex,
    task_trace_id,
)
from taskstream.telemetry.tracing import OFF, Telemetry, build_provider
from taskstream.workers.outcome import Failure, Success
from taskstream.workers.tracing import AttemptTracing
from tests.lifecycle_support import Story, submitted

ids128 = st.integers(1, (1 << 128) - 1)
ids64 = st.integers(1, (1 << 64) - 1)


def memory_telemetry(ratio: float = 1.0) -> tuple[Telemetry, InMemorySpanExporter]:
    provider = build_provider(Settings(trace_sample_ratio=ratio), "test")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(provider, ratio), exporter


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def ctx_of(span: ReadableSpan) -> TraceContext:
    assert span.context is not None
    return TraceContext(span.context.trace_id, span.context.span_id)


def parent_of(span: ReadableSpan) -> TraceContext | None:
    return TraceContext(span.parent.trace_id, span.parent.span_id) if span.parent else None


# -- the pure part ------------------------------------------------------------------


@given(ids128, ids64, st.booleans())
def test_traceparent_round_trips(trace_id: int, span_id: int, sampled: bool) -> None:
    ctx = TraceContext(trace_id, span_id, sampled)
    assert parse_traceparent(ctx.traceparent()) == ctx
    assert from_headers([("other", b"x"), ctx.header()]) == ctx
    assert from_headers({TRACEPARENT: ctx.traceparent().encode()}) == ctx


@pytest.mark.parametrize("value", [
    None, "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # missing flags
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # v00 with a 5th field
    b"\xff\xfe",
])
def test_invalid_traceparents_are_ignored(value: str | bytes | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_fields() -> None:
    ctx = parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later")
    assert ctx == TraceContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True)


def test_a_task_trace_is_its_id() -> None:
    task_id = new_task_id()
    assert task_trace_id(task_id) == int(ULID.from_str(task_id))
    keyed = derived_task_id("demo.add", "order-42")
    assert task_trace_id(keyed) == int(ULID.from_str(keyed))
    assert task_trace_hex(task_id) == f"{int(ULID.from_str(task_id)):032x}"
    # any other key (an entity's) hashes, stably, to a valid id
    assert task_trace_id("schedule:nightly") == task_trace_id("schedule:nightly") != 0


def test_derived_spans_differ_per_purpose_and_are_stable() -> None:
    task_id = new_task_id()
    ids = {submit_context(task_id).span_id, dispatch_context(task_id, "d1").span_id,
           dispatch_context(task_id, "d2").span_id, retry_context(task_id, 1).span_id,
           retry_context(task_id, 2).span_id}
    assert len(ids) == 5
    assert dispatch_context(task_id, "d1") == dispatch_context(task_id, "d1")
    assert {c.trace_id for c in (submit_context(task_id), retry_context(task_id, 1))} == {
        task_trace_id(task_id)}


@given(ids128, st.floats(0.0, 1.0))
def test_sampling_agrees_with_the_sdk(trace_id: int, ratio: float) -> None:
    sdk = TraceIdRatioBased(ratio).should_sample(None, trace_id, "x").decision
    assert sampled_by_ratio(trace_id, ratio) == (sdk is Decision.RECORD_AND_SAMPLE)


# -- the SDK pipeline -------------------------------------------------------------------


def test_off_is_off() -> None:
    assert not OFF.enabled and not SubmitTracing().enabled and not FoldTracing().enabled
    assert Telemetry.from_settings(Settings(), "x") is OFF


def test_given_ids_are_taken_and_others_are_random() -> None:
    telemetry, exporter = memory_telemetry()
    telemetry.record("fixed", start_ns=1, end_ns=2, trace_id=7, span_id=9)
    parent = TraceContext(7, 9)
    telemetry.record("child", start_ns=3, end_ns=4, parent=parent)
    spans = by_name(exporter)
    assert ctx_of(spans["fixed"]) == TraceContext(7, 9) and spans["fixed"].parent is None
    assert ctx_of(spans["child"]).trace_id == 7 and parent_of(spans["child"]) == parent
    assert ctx_of(spans["child"]).span_id not in (0, 9)
    telemetry.shutdown()
    assert not telemetry.enabled


def test_an_unsampled_task_records_nothing_anywhere() -> None:
    telemetry, exporter = memory_telemetry(ratio=0.5)
    while True:
        task_id = new_task_id()
        if not sampled_by_ratio(task_trace_id(task_id), 0.5):
            break
    SubmitTracing(telemetry).submitted(task_id, "demo.add", 0)
    assert exporter.get_finished_spans() == ()
    assert SubmitTracing(telemetry).headers(task_id)[0][1].endswith(b"-00")


# -- the parts' spans --------------------------------------------------------------------


def test_submit_span_is_the_root_and_links_caller_and_dependencies() -> None:
    telemetry, exporter = memory_telemetry()
    tracing = SubmitTracing(telemetry, "events")
    task_id, parent_task = new_task_id(), new_task_id()
    caller_tracer = telemetry.provider.get_tracer("caller")  # type: ignore[union-attr]
    with caller_tracer.start_as_current_span("http request") as caller:
        tracing.submitted(task_id, "demo.add", 0, queue="q", depends_on=[parent_task])
    span = by_name(exporter)["taskstream.submit"]
    assert ctx_of(span) == submit_context(task_id) and span.parent is None
    linked = {(link.context.trace_id, link.context.span_id) for link in span.links}
    assert (caller.get_span_context().trace_id, caller.get_span_context().span_id) in linked
    root = submit_context(parent_task)
    assert (root.trace_id, root.span_id) in linked
    assert tracing.headers(task_id) == [submit_context(task_id).header()]


def fail_body(story: Story) -> TaskFailed:
    return TaskFailed(story.dispatch_id, "w1", "ValueError", "boom", "tb")


def _dispatched(story: Story) -> Envelope:
    dispatch = next(e for e in story.effects if isinstance(e, Dispatch))
    return dispatch.envelope


def test_one_task_chains_dispatch_run_retry_dispatch_in_one_trace() -> None:
    """The real fold's effects through FoldTracing and the worker's spans: every span is in
    the task's trace, each hangs under what caused it, the retry links the attempts."""
    telemetry, exporter = memory_telemetry()
    fold, worker = FoldTracing(telemetry), AttemptTracing(telemetry, "w1")
    story = Story(task_id=new_task_id())
    submit = story.event(submitted())
    effects = story.apply(submit)
    ready_headers = fold.effect(next(e for e in effects if isinstance(e, Dispatch)), submit,
                                [submit_context(story.task_id).header()])
    first = _dispatched(story)
    assert isinstance(first.body, TaskDispatched)
    attempt = worker.begin(first, first.body, "ready.q.p1", from_headers(ready_headers))
    worker.end(attempt, Failure("ValueError", "boom"))
    failed = story.event(fail_body(story))
    effects = story.apply(failed)
    retry = next(e for e in effects if isinstance(e, RetryScheduled))
    assert fold.effect(retry, failed, attempt.headers) is None
    assert story.s.due_at_ms is not None
    timer = story.event(TimerFired(TimerKind.RETRY_DUE, story.s.due_at_ms, story.dispatch_id),
                        attempt=story.s.attempt, at=story.s.due_at_ms)
    timer_headers = fold.timer_headers(story.task_id, TimerKind.RETRY_DUE, story.s.attempt, "")
    effects = story.apply(timer)
    fold.effect(next(e for e in effects if isinstance(e, Dispatch)), timer, timer_headers)
    second = _dispatched(story)
    assert isinstance(second.body, TaskDispatched)
    run2 = worker.begin(second, second.body, "ready.q.p1", None)  # no header: derived
    worker.end(run2, Success(b"1"))

    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans if s.context} == {task_trace_id(story.task_id)}
    dispatches = [s for s in spans if s.name == "taskstream.dispatch"]
    runs = [s for s in spans if s.name == "taskstream.run"]
    retry_span = next(s for s in spans if s.name == "taskstream.retry")
    assert parent_of(dispatches[0]) == submit_context(story.task_id)
    assert parent_of(runs[0]) == ctx_of(dispatches[0])
    assert parent_of(retry_span) == ctx_of(runs[0])
    assert parent_of(dispatches[1]) == ctx_of(retry_span) == retry_context(story.task_id, 1)
    assert parent_of(runs[1]) == ctx_of(dispatches[1])
    waits = [s for s in spans if s.name == "taskstream.queue_wait"]
    assert [parent_of(w) for w in waits] == [ctx_of(d) for d in dispatches]
    assert runs[0].status.status_code is StatusCode.ERROR
    assert runs[1].attributes is not None and runs[1].attributes["taskstream.outcome"] == \
        "succeeded"
    assert retry_span.end_time is not None and retry_span.start_time is not None
    assert retry_span.end_time - retry_span.start_time == retry.delay_ms * 1_000_000


def test_dead_letters_and_refusals_hang_under_the_run_that_caused_them() -> None:
    telemetry, exporter = memory_telemetry()
    fold = FoldTracing(telemetry)
    story = Story(task_id=new_task_id())
    story.submit(max_attempts=1)
    story.start()
    run = TraceContext(task_trace_id(story.task_id), random.getrandbits(63) + 1)
    dead = story.event(fail_body(story))
    effects = story.apply(dead)
    headers = fold.effect(next(e for e in effects if isinstance(e, DeadLetter)), dead,
                          [run.header()])
    late = story.event(fail_body(story))
    effects = story.apply(late)
    fold.effect(next(e for e in effects if isinstance(e, Rejected)), late, [run.header()])
    spans = by_name(exporter)
    assert parent_of(spans["taskstream.dead_letter"]) == run
    assert headers == [ctx_of(spans["taskstream.dead_letter"]).header()]
    assert parent_of(spans["taskstream.rejected"]) == run


def first_dispatch() -> tuple[Story, Envelope, TaskDispatched]:
    """A task just submitted: its story and the ready record of its first attempt."""
    story = Story(task_id=new_task_id())
    story.submit()
    first = _dispatched(story)
    assert isinstance(first.body, TaskDispatched)
    return story, first, first.body


def test_a_foreign_traceparent_is_linked_not_adopted() -> None:
    telemetry, exporter = memory_telemetry()
    story, first, body = first_dispatch()
    foreign = TraceContext(12345, 678)
    AttemptTracing(telemetry).end(
        AttemptTracing(telemetry).begin(first, body, "t", foreign), None)
    run = by_name(exporter)["taskstream.run"]
    assert parent_of(run) == dispatch_context(story.task_id, body.dispatch_id)
    assert [(link.context.trace_id, link.context.span_id) for link in run.links] == [
        (12345, 678)]
    assert run.status.status_code is StatusCode.ERROR  # interrupted


class HeadedRec:
    """A consumed events record as the live fold sees it, headers included."""

    def __init__(self, envelope: Envelope, offset: int,
                 headers: list[tuple[str, bytes]] | None) -> None:
        self.envelope, self.o, self.h = envelope, offset, headers

    def key(self) -> bytes:
        return self.envelope.task_id.encode()

    def value(self) -> bytes:
        return encode_event(self.envelope)

    def offset(self) -> int:
        return self.o

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.h


def test_the_live_fold_traces_each_effect_under_its_record_and_carries_the_context() -> None:
    """A batch folded by the live fold's own code: each dispatch gets its span under the
    context its TaskSubmitted record carried (or the one the submit implies, with a foreign
    header linked), and keeps the traceparent its ready record carries to the worker."""
    telemetry, exporter = memory_telemetry()
    carried, foreign = Story(task_id=new_task_id()), Story(task_id=new_task_id())
    bare = Story(task_id=new_task_id())
    records = [
        HeadedRec(carried.event(submitted()), 10, [submit_context(carried.task_id).header()]),
        HeadedRec(foreign.event(submitted()), 11, [TraceContext(12345, 678).header()]),
        HeadedRec(bare.event(submitted()), 12, None)]
    fold = fold_partition(3, records, lambda key: None, Limits(), Checks())
    trace_effects(FoldTracing(telemetry), [fold], {3: records})

    dispatches = {s.context.trace_id: s for s in exporter.get_finished_spans()
                  if s.name == "taskstream.dispatch" and s.context is not None}
    assert set(dispatches) == {task_trace_id(t.task_id) for t in (carried, foreign, bare)}
    for story in (carried, foreign, bare):
        span = dispatches[task_trace_id(story.task_id)]
        assert parent_of(span) == submit_context(story.task_id)
        caused = next(c for c in fold.effects if c.cause.task_id == story.task_id
                      and isinstance(c.effect, Dispatch))
        body = caused.effect.envelope.body
        assert isinstance(body, TaskDispatched)
        assert caused.headers == [dispatch_context(story.task_id, body.dispatch_id).header()]
        assert ctx_of(span) == dispatch_context(story.task_id, body.dispatch_id)
    assert [(link.context.trace_id, link.context.span_id)
            for link in dispatches[task_trace_id(foreign.task_id)].links] == [(12345, 678)]
    assert not dispatches[task_trace_id(carried.task_id)].links
    assert not dispatches[task_trace_id(bare.task_id)].links


def test_a_handler_span_is_a_child_of_the_run_span() -> None:
    telemetry, exporter = memory_telemetry()
    _, first, body = first_dispatch()
    attempt = AttemptTracing(telemetry).begin(first, body, "t", None)

    async def handler() -> None:
        tracer = telemetry.provider.get_tracer("handler")  # type: ignore[union-attr]
        with tracer.start_as_current_span("handler work"):
            pass

    async def main() -> None:
        await asyncio.create_task(handler(), context=attempt.handler_context())

    asyncio.run(main())
    AttemptTracing.end(attempt, Success(b""))
    spans = by_name(exporter)
    assert parent_of(spans["handler work"]) == ctx_of(spans["taskstream.run"])
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked into this context
