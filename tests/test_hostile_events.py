"""Hostile events on the events topic against a live replica: each one set aside in the
quarantine topic with its reason, the fold going on, and the live state still exactly the
fold of the log (D28, D11)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskstream.cli.main import main
from taskstream.dev.procs import settings_env
from taskstream.schemas.events import (
    Backoff,
    Envelope,
    TaskFailed,
    TaskSubmitted,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.quarantine import QuarantineRecord
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings
from tests.harness import EventWriter, ProcessorProcess, TopicReader, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def submitted(**changes: object) -> TaskSubmitted:
    body = TaskSubmitted(
        name="demo.add", queue="default", priority=0, payload=b'{"n": 1}',
        content_type="application/json", eta_ms=None, max_attempts=3,
        backoff=Backoff(200, 2.0, 1_000, 0.0), timeout_ms=None, lease_ms=30_000)
    return dataclasses.replace(body, **changes)  # type: ignore[arg-type]


def corpus() -> list[tuple[bytes, Envelope, str]]:
    """(record key, envelope, what the quarantine reason says) of each hostile record."""
    now = int(time.time() * 1000)

    def env(body: object, task_id: str | None = None, **changes: object) -> Envelope:
        e = Envelope(new_event_id(), task_id or new_task_id(), now, "hostile", 0, body)  # type: ignore[arg-type]
        return dataclasses.replace(e, **changes)  # type: ignore[arg-type]

    victim = new_task_id()
    items = [
        (new_task_id().encode(), env(submitted(), victim), "record key"),
        (None, env(submitted(priority=99)), "priority 99"),
        (None, env(submitted(lease_ms=0)), "lease_ms 0"),
        (None, env(submitted(queue="../evil")), "not a queue name"),
        (None, env(submitted(tags=["t"] * 100)), "100 tags"),
        (None, env(submitted(depends_on=[new_task_id() for _ in range(1001)])), "1001 parents"),
        (None, env(TimerFired(TimerKind.DELAY_DUE, now), "not-a-task"), "not a task ID"),
        (None, env(submitted(), event_id=""), "event_id"),
        (None, env(TaskFailed("d", "w", "E", "m" * 70_000)), "message"),
    ]
    return [(key or e.task_id.encode(), e, says) for key, e, says in items]


def test_hostile_events_are_quarantined_and_the_fold_goes_on(topics: Settings,
                                                              tmp_path: Path) -> None:
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    try:
        writer = EventWriter(topics)
        hostile = corpus()
        for key, envelope, _ in hostile:
            writer.producer.produce(topics.topic("events"), key=key, value=encode_event(envelope))
        assert writer.producer.flush(10) == 0
        quarantine = TopicReader(topics, topics.topic("quarantine"))
        got: list[QuarantineRecord] = []

        def all_set_aside() -> bool:
            got.extend(QuarantineRecord.from_headers(m.headers()) for m in quarantine.messages())
            return len(got) >= len(hostile)

        wait_for("every hostile record in the quarantine topic", all_set_aside, timeout=60)
        reasons = sorted(r.reason for r in got)
        for _, _, says in hostile:
            assert any(says in r for r in reasons), (says, reasons)
        good = new_task_id()
        writer.send(good, submitted())
        ready = TopicReader(topics, topics.topic("ready.default.p0"))
        wait_for("the next good task dispatched", lambda: any(
            e.task_id == good for e in ready.envelopes()), timeout=60)
        verify = CliRunner().invoke(main, ["replay", "verify"], env=settings_env(topics))
        assert verify.exit_code == 0, verify.output  # the live state is the fold of the log
    finally:
        replica.stop()
