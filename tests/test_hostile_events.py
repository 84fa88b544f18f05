"""Hostile events on the events topic against a live replica that verifies signatures:
each one set aside in the quarantine topic with its reason, the fold going on (its own
signed timers included), and the live state still exactly the fold of the log (D26, D28,
D11)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from taskstream.cli.main import main
from taskstream.dev.procs import settings_env
from taskstream.schemas.events import (
    Backoff,
    Envelope,
    TaskFailed,
    TaskSubmitted,
    TaskSucceeded,
    TimerFired,
    TimerKind,
)
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.quarantine import QuarantineRecord
from taskstream.schemas.serde import encode_event
from taskstream.security.keyring import keyring_json, new_secret, parse_keyring
from taskstream.security.signing import Signer
from taskstream.settings import Settings
from tests.harness import EventWriter, ProcessorProcess, TopicReader, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def submitted(**changes: object) -> TaskSubmitted:
    body = TaskSubmitted(
        name="demo.add", queue="default", priority=0, payload=b'{"n": 1}',
        content_type="application/json", eta_ms=None, max_attempts=3,
        backoff=Backoff(200, 2.0, 1_000, 0.0), timeout_ms=None, lease_ms=30_000)
    return dataclasses.replace(body, **changes)  # type: ignore[arg-type]


WORKER_KEY, PROCESSOR_KEY = new_secret(), new_secret()
#: the processor's keyring: its own key (current, it signs its timers) and the worker's
PROCESSOR_RING = keyring_json({"p1": {"role": "processor", "key": PROCESSOR_KEY},
                               "w1": {"role": "worker", "key": WORKER_KEY}}, "p1")


def worker_signed(key: bytes, envelope: Envelope) -> list[tuple[str, bytes]]:
    ring = parse_keyring(keyring_json({"w1": {"role": "worker", "key": WORKER_KEY}}, "w1"),
                         "signing", "test")
    signer = Signer.from_keyring(ring)
    assert signer is not None
    return [signer.header(key, encode_event(envelope))]


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
        (None, env(TimerFired(TimerKind.DELAY_DUE, now), "not-a-task"), "neither a task ID"),
        (None, env(submitted(), event_id=""), "event_id"),
        (None, env(TaskFailed("d", "w", "E", "m" * 70_000)), "message"),  # worker-signed
        (None, env(TaskSucceeded("d", "w", b'"forged"')), "not signed"),
        (None, env(TimerFired(TimerKind.LEASE_EXPIRED, now, "d")), "not signed"),
    ]
    return [(key or e.task_id.encode(), e, says) for key, e, says in items]


def test_hostile_events_are_quarantined_and_the_fold_goes_on(topics: Settings,
                                                              tmp_path: Path) -> None:
    topics = topics.model_copy(update={"signing_keys": SecretStr(PROCESSOR_RING)})
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    try:
        writer = EventWriter(topics)
        hostile = corpus()
        timer = Envelope(new_event_id(), new_task_id(), int(time.time() * 1000), "w", 0,
                         TimerFired(TimerKind.DELAY_DUE, 0))
        hostile.append((timer.task_id.encode(), timer, "signed by a worker key"))
        for key, envelope, _ in hostile:
            signs = envelope is timer or isinstance(envelope.body, TaskFailed)
            headers = worker_signed(key, envelope) if signs else None
            writer.producer.produce(topics.topic("events"), key=key, value=encode_event(envelope),
                                    headers=headers)
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
        good, delayed = new_task_id(), new_task_id()
        writer.send(good, submitted())
        # a delayed task is dispatched by the replica's own TimerFired: signed, accepted
        writer.send(delayed, submitted(eta_ms=int(time.time() * 1000) + 500))
        ready = TopicReader(topics, topics.topic("ready.default.p0"))
        seen: set[str] = set()

        def both_dispatched() -> bool:
            seen.update(e.task_id for e in ready.envelopes())
            return {good, delayed} <= seen

        wait_for("the good and the delayed task dispatched", both_dispatched, timeout=60)
        verify = CliRunner().invoke(main, ["replay", "verify"], env=settings_env(topics))
        assert verify.exit_code == 0, verify.output  # the live state is the fold of the log
    finally:
        replica.stop()
