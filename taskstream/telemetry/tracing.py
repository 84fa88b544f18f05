"""A process's tracing: off, or an OpenTelemetry SDK pipeline exporting OTLP/HTTP.

Off is the default (no ``TASKSTREAM_OTLP_ENDPOINT``): :data:`OFF` is a
:class:`Telemetry` whose ``enabled`` is False, and every part checks that one
attribute before doing anything for a trace, so a task pays one attribute read
per step and the SDK is never imported.

On, each process gets its own ``TracerProvider`` (never the global one: a
service that embeds the SDK keeps its own OpenTelemetry setup) with:

* an id generator that takes the ids a span is given (``span(..., span_id=,
  trace_id=)``) and makes random ones otherwise, so the spans every process can
  name from the task ID (context.py) are real SDK spans with those ids;
* ``ParentBased(TraceIdRatioBased(trace_sample_ratio))``: the task ID decides, and
  every process decides the same;
* a ``BatchSpanProcessor`` and the OTLP/HTTP protobuf exporter to
  ``<endpoint>/v1/traces`` (the SDK's ``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_*``
  variables tune them). :meth:`Telemetry.shutdown` flushes; every process calls it
  when it stops.

The worker also installs its provider as the global one (:meth:`install_global`)
when nothing else has, so a handler's own ``trace.get_tracer(...)`` spans are
exported with the run span they are children of (docs/decisions.md, D22).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from taskstream.settings import Settings
from taskstream.telemetry.context import TraceContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("taskstream.telemetry")

Attributes = Mapping[str, str | int | float | bool]

#: ids the next span must take: (trace id or None, span id or None)
_FIXED_IDS: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "taskstream_fixed_span_ids", default=(None, None))


def _remote(ctx: TraceContext) -> SpanContext:
    return SpanContext(ctx.trace_id, ctx.span_id, is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED if ctx.sampled else 0))


def link_to(ctx: TraceContext, **attributes: str | int) -> Link:
    """A span link to ``ctx`` (another attempt, a parent task, a caller's span)."""
    return Link(_remote(ctx), attributes or None)


def context_of(span: Span) -> TraceContext | None:
    """The TraceContext of an OpenTelemetry span (any provider's), or None if invalid."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return TraceContext(sc.trace_id, sc.span_id, bool(sc.trace_flags & TraceFlags.SAMPLED))


def current_context() -> TraceContext | None:
    """The caller's current span (from whatever OpenTelemetry setup it has), or None."""
    return context_of(trace.get_current_span())


def _endpoint(base: str) -> str:
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


class Telemetry:
    """Tracing for one process. ``enabled`` False: every method is a cheap no-op."""

    def __init__(self, provider: TracerProvider | None = None, ratio: float = 1.0) -> None:
        self._provider = provider
        self.enabled = provider is not None
        self.ratio = ratio
        self._tracer = provider.get_tracer("taskstream") if provider is not None else None

    @classmethod
    def from_settings(cls, settings: Settings, service: str,
                      instance: str | None = None) -> Telemetry:
        """Tracing as the settings ask: :data:`OFF` without ``otlp_endpoint``."""
        if not settings.otlp_endpoint:
            return OFF
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = build_provider(settings, service, instance)
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=_endpoint(settings.otlp_endpoint))))
        log.info("tracing to %s (service %s, sample ratio %g)",
                 _endpoint(settings.otlp_endpoint), service, settings.trace_sample_ratio)
        return cls(provider, settings.trace_sample_ratio)

    @property
    def provider(self) -> TracerProvider | None:
        return self._provider

    def install_global(self) -> bool:
        """Make this provider the process's global one unless another is set already."""
        if self._provider is None:
            return False
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return False
        trace.set_tracer_provider(self._provider)
        return True

    def start(
        self,
        name: str,
        *,
        parent: TraceContext | None = None,
        trace_id: int | None = None,
        span_id: int | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        start_ns: int | None = None,
        attributes: Attributes | None = None,
        links: Sequence[Link] = (),
    ) -> Span:
        """Start a span under ``parent`` (a root when None) with the ids given, if any.

        ``trace_id`` only matters for a root; a child is in its parent's trace.
        """
        assert self._tracer is not None, "tracing is off: check Telemetry.enabled first"
        ctx = (trace.set_span_in_context(NonRecordingSpan(_remote(parent)))
               if parent is not None else otel_context.Context())
        token = _FIXED_IDS.set((trace_id, span_id))
        try:
            return self._tracer.start_span(name, context=ctx, kind=kind, attributes=attributes,
                                           links=links, start_time=start_ns)
        finally:
            _FIXED_IDS.reset(token)

    def record(self, name: str, *, start_ns: int, end_ns: int, error: str | None = None,
               **kwargs: Any) -> TraceContext | None:
        """A span that already happened (its times known): start it, end it, return it."""
        span = self.start(name, start_ns=start_ns, **kwargs)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=max(end_ns, start_ns))
        return context_of(span)

    @contextmanager
    def current(self, span: Span) -> Iterator[None]:
        """Make ``span`` the current one (handlers' own spans become its children)."""
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def flush(self, timeout_s: float = 5.0) -> bool:
        if self._provider is None:
            return True
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter (idempotent)."""
        provider, self._provider = self._provider, None
        self._tracer = None
        self.enabled = False
        if provider is not None:
            provider.shutdown()


#: tracing off: the default of every part
OFF = Telemetry()


class Traced:
    """What each part's tracing (submit, fold, attempts) shares: its pipeline, and the one
    check a caller makes before anything else (``enabled``)."""

    def __init__(self, telemetry: Telemetry = OFF) -> None:
        self.telemetry = telemetry

    @property
    def enabled(self) -> bool:
        return self.telemetry.enabled


def build_provider(settings: Settings, service: str, instance: str | None = None
                   ) -> TracerProvider:
    """An SDK TracerProvider with taskstream's id generator and sampler, no exporter yet."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class _GivenIds(IdGenerator):
        """The ids set by :meth:`Telemetry.start` for this span, random ones otherwise."""

        def generate_span_id(self) -> int:
            fixed = _FIXED_IDS.get()[1]
            return fixed if fixed is not None else random.getrandbits(64) or 1

        def generate_trace_id(self) -> int:
            fixed = _FIXED_IDS.get()[0]
            return fixed if fixed is not None else random.getrandbits(128) or 1

    resource = Resource.create({
        "service.name": service,
        "service.instance.id": instance or f"{socket.gethostname()}:{os.getpid()}",
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    })
    return TracerProvider(resource=resource, id_generator=_GivenIds(),
                          sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
