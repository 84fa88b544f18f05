"""Observability every part shares: trace context, the tracing pipeline, structured logs.

Part of the base layer (docs/decisions.md, D16, D22): it knows settings, nothing
of schemas or Kafka. ``context`` is pure (a task's trace and span ids, W3C
``traceparent``); ``tracing`` builds a process's OpenTelemetry pipeline (off unless
``TASKSTREAM_OTLP_ENDPOINT`` is set); ``logs`` formats log lines as text or JSON
with the task's fields.
"""
