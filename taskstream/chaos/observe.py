"""Watch the task changelog as the run goes: when each task first reached a terminal
state (D42). The runner times recovery with it (a canary submitted as a fault strikes
is done when the observer sees it terminal) and waits, bounded, for the ledger's tasks
to finish once the faults have healed. The invariants themselves are checked from the
events log afterwards (:mod:`taskstream.chaos.checker`), not from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from taskstream.kafka_config import consumer_config
from taskstream.processors.fold.schedule import FIRE_TIME_HEADER, SCHEDULE_HEADER
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_entity
from taskstream.schemas.state import TERMINAL, TaskState
from taskstream.settings import Settings
from taskstream.topics import chaos_reader_group, task_changelog_topic


class Observer(threading.Thread):
    """Tails the task changelog from its beginning; ``done[task_id]``: the monotonic
    time the task was first seen terminal; ``status[task_id]``: its latest status;
    ``ticks[schedule_id][fire time]``: the task a schedule's tick submitted."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="chaos-observer", daemon=True)
        self.settings = settings
        self.done: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.ticks: dict[str, dict[int, str]] = {}
        self._ticks_lock = threading.Lock()  # ticks is read by the runner's thread
        self._halt = threading.Event()
        self.consumer = Consumer(consumer_config(
            settings, chaos_reader_group(settings, "observer", new_event_id()),
            {"enable.auto.commit": False}))
        topic = task_changelog_topic(settings)
        parts = self.consumer.list_topics(topic, timeout=settings.kafka_timeout_s
                                          ).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for msg in self.consumer.consume(500, 0.5):
                    value = msg.value()
                    if msg.error() or msg.key() is None or value is None:
                        continue
                    try:
                        state = decode_entity(value)
                    except DecodeError:
                        continue
                    if isinstance(state, TaskState):
                        self._saw(state)
        finally:
            self.consumer.close()

    def _saw(self, state: TaskState) -> None:
        self.status[state.task_id] = state.status.value
        schedule_id = state.headers.get(SCHEDULE_HEADER)
        if schedule_id is not None and state.headers.get(FIRE_TIME_HEADER, "").isdigit():
            fire_at = int(state.headers[FIRE_TIME_HEADER])
            with self._ticks_lock:
                self.ticks.setdefault(schedule_id, {})[fire_at] = state.task_id
        if state.status in TERMINAL and state.task_id not in self.done:
            self.done[state.task_id] = time.monotonic()

    def tick_tasks(self, schedule_ids: Iterable[str]) -> set[str]:
        """The tasks seen so far that ticks of these schedules submitted."""
        with self._ticks_lock:
            return {t for sid in schedule_ids for t in self.ticks.get(sid, {}).values()}

    def latest_tick(self, schedule_id: str) -> int | None:
        """The latest fire time of the schedule seen so far."""
        with self._ticks_lock:
            return max(self.ticks.get(schedule_id, {}), default=None)

    def wait_ticks_since(self, schedule_ids: Iterable[str], since_ms: int,
                         timeout: float) -> bool:
        """Wait until each schedule has a tick seen at or after ``since_ms`` (its fire
        time, wall clock) or ``timeout``; whether they all had."""
        ids = list(schedule_ids)
        deadline = time.monotonic() + timeout
        while True:
            if all((self.latest_tick(sid) or 0) >= since_ms for sid in ids):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def wait_done(self, task_ids: set[str], timeout: float) -> set[str]:
        """Wait until every task is seen terminal or ``timeout``; those still not done."""
        deadline = time.monotonic() + timeout
        while True:
            left = {t for t in task_ids if t not in self.done}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def close(self) -> None:
        self._halt.set()
        self.join(10)
