"""The workload's producers: the SDK at a steady rate, and the retrying producer (D42).

:class:`Submitter` runs in a thread: every tick it submits its share of the mix
through the SDK (:class:`~taskstream.producer.TaskProducer`), repeats duplicates and
sends cancellations when they are due, and moves each event to the ledger once Kafka
acknowledged it (a refused or never-acknowledged event is counted, not recorded: the
caller was told it failed, so losing it is not the platform's fault).

While the ``producer-dup`` fault is on (:attr:`Submitter.retrying`), fast tasks go
through :class:`RetryingProducer` instead: it sends every encoded TaskSubmitted twice,
byte for byte, as a client does that retries after a timeout when the first send had
in fact landed. The platform must fold the second copy as a duplicate.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from taskstream.chaos.workload import Entry, Ledger, Submission, task_options
from taskstream.errors import TaskstreamError
from taskstream.kafka_config import producer_config
from taskstream.producer import TaskProducer
from taskstream.producer.build import EventBuilder, now_ms
from taskstream.producer.errors import DeliveryTimeoutError
from taskstream.schemas.models import SpecLimits
from taskstream.settings import Settings
from taskstream.topics import events_topic

TICK_S = 0.2
SOURCE = "taskstream-chaos"


class RetryingProducer:
    """Sends each task's TaskSubmitted record twice (the same bytes: the same event ID)."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.topic = events_topic(settings)
        self.build = EventBuilder(f"{SOURCE}-retrying", settings.max_payload_bytes,
                                  limits=SpecLimits.from_settings(settings))
        self.producer = Producer(producer_config(settings))
        self.sent = 0

    def submit(self, sub: Submission) -> None:
        task_id, value = self.build.from_call(sub.name, sub.payload, sub.options, now_ms())
        acked: list[bool] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            acked.append(err is None)
            if len(acked) == 2:
                if any(acked):  # one copy acknowledged is an acknowledged submission
                    self.ledger.record(Entry(task_id, sub.kind, "TaskSubmitted",
                                             time.monotonic(), "retrying-producer", sub.n))
                else:
                    self.ledger.count_refused()

        for _ in range(2):
            self.producer.produce(self.topic, key=task_id.encode(), value=value,
                                  on_delivery=delivered)
        self.sent += 2
        self.producer.poll(0)

    def poll(self) -> None:
        self.producer.poll(0)

    def close(self, timeout: float) -> None:
        self.producer.flush(timeout)


@dataclass(order=True)
class _Later:
    due: float
    seq: int
    action: str = field(compare=False)  # "repeat" | "cancel"
    sub: Submission = field(compare=False)
    task_id: str = field(compare=False)


class Submitter(threading.Thread):
    """Submits ``rate`` tasks a second from ``mix`` until :meth:`finish`."""

    def __init__(self, settings: Settings, mix: Iterator[Submission], ledger: Ledger,
                 rate: float) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.settings = settings
        self.mix = mix
        self.ledger = ledger
        self.rate = rate
        self.producer = TaskProducer(settings, source=SOURCE)
        self.retrying_producer = RetryingProducer(settings, ledger)
        self.retrying = threading.Event()  # set while the producer-dup fault is on
        self.submitted = 0
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._pending: list[tuple[Any, Entry]] = []  # (handle, entry once acknowledged)
        self._later: list[_Later] = []
        self._seq = 0
        self._previous: str | None = None  # the last task sent: a dependent's parent
        self._lock = threading.RLock()  # the SDK producer and _pending, shared with canary()
        self.live_schedules: list[str] = []  # IDs created and not yet deleted

    def run(self) -> None:
        started = time.monotonic()
        while not self._halt.is_set():
            due = int((time.monotonic() - started) * self.rate) - self.submitted
            for _ in range(max(0, due)):
                self._guarded(lambda: self._submit(next(self.mix)))
            self._guarded(self._due_later)
            self._settle()
            self.retrying_producer.poll()
            time.sleep(TICK_S)

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except TaskstreamError as exc:  # e.g. the local queue stayed full while a broker was down
            self.ledger.count_refused()
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def _submit(self, sub: Submission) -> None:
        self.submitted += 1
        if sub.kind == "fast" and self.retrying.is_set():
            self.retrying_producer.submit(sub)
            return
        task_id = self._send(sub)
        if sub.repeat_after_s is not None:
            self._schedule(sub.repeat_after_s, "repeat", sub, task_id)
        if sub.cancel_after_s is not None:
            self._schedule(sub.cancel_after_s, "cancel", sub, task_id)

    def _send(self, sub: Submission) -> str:
        options = dict(sub.options)
        if sub.after_previous and self._previous is not None:
            options["depends_on"] = [self._previous]
        with self._lock:
            handle = self.producer.submit(sub.name, sub.payload, **options)
            self._pending.append((handle, Entry(handle.task_id, sub.kind, "TaskSubmitted",
                                                0.0, "sdk", sub.n)))
        self._previous = str(handle.task_id)
        return self._previous

    def _schedule(self, after: float, action: str, sub: Submission, task_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._later, _Later(time.monotonic() + after, self._seq, action, sub,
                                           task_id))

    def _due_later(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0].due <= now:
            item = heapq.heappop(self._later)
            if item.action == "repeat":
                self._send(item.sub)
            else:
                with self._lock:
                    handle = self.producer.cancel(item.task_id, "chaos workload")
                    self._pending.append((handle, Entry(item.task_id, item.sub.kind,
                                                        "CancelRequested", 0.0, "sdk",
                                                        item.sub.n)))

    def _settle(self) -> None:
        """Move acknowledged events to the ledger; count refused ones."""
        with self._lock:
            pending, self._pending = self._pending, []
        still = []
        for handle, entry in pending:
            try:
                handle.delivered(0)
            except DeliveryTimeoutError:
                still.append((handle, entry))
                continue
            except TaskstreamError:
                self.ledger.count_refused()
                continue
            self.ledger.record(Entry(entry.task_id, entry.kind, entry.event, time.monotonic(),
                                     entry.via, entry.n))
        with self._lock:
            self._pending[:0] = still

    def create_schedules(self, defs: list[tuple[str, dict[str, Any]]]) -> None:
        """Create the run's schedules through the SDK, as a user does; each creation goes
        to the ledger (``ScheduleSet``) once Kafka acknowledged it."""
        for schedule_id, kwargs in defs:
            with self._lock:
                handle = self.producer.schedule(schedule_id, **kwargs)
                self._pending.append((handle, Entry(handle.task_id, "schedule", "ScheduleSet",
                                                    0.0)))
            self.live_schedules.append(schedule_id)

    def delete_schedules(self) -> None:
        """Delete every schedule this run created and has not deleted yet (the run can
        then finish; against a deployment, none is left firing)."""
        while self.live_schedules:
            schedule_id = self.live_schedules.pop()
            with self._lock:
                handle = self.producer.unschedule(schedule_id, "chaos run: draining")
                self._pending.append((handle, Entry(handle.task_id, "schedule",
                                                    "ScheduleCommand", 0.0)))

    def canary(self) -> str:
        """Submit one fast task now (the runner times recovery with it); its ID."""
        with self._lock:
            handle = self.producer.submit("chaos.fast", {"canary": True},
                                          **task_options())
            self._pending.append((handle, Entry(handle.task_id, "canary", "TaskSubmitted",
                                                0.0)))
        return str(handle.task_id)

    def finish(self, timeout: float) -> None:
        """Stop submitting (and delete the schedules still live); wait (bounded) for what
        is pending to be acknowledged or refused."""
        self._halt.set()
        self.join(timeout)
        self._guarded(self.delete_schedules)
        deadline = time.monotonic() + timeout
        while self._later and time.monotonic() < deadline:
            self._guarded(self._due_later)
            time.sleep(TICK_S)
        try:
            with self._lock:
                self.producer.flush(max(1.0, deadline - time.monotonic()))
        except TaskstreamError as exc:
            self.errors.append(f"flush: {exc}"[:300])
        self.retrying_producer.close(max(1.0, deadline - time.monotonic()))
        self._settle()
        for _handle, _entry in self._pending:
            self.ledger.count_refused()  # never acknowledged within the bound
        self._pending = []
        self.producer.close(5)
