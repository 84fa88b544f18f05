"""Watch the task changelog as the run goes: when each task first reached a terminal
state (D42). The runner times recovery with it (a canary submitted as a fault strikes
is done when the observer sees it terminal) and waits, bounded, for the ledger's tasks
to finish once the faults have healed. The invariants themselves are checked from the
events log afterwards (:mod:`taskstream.chaos.checker`), not from here.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from taskstream.kafka_config import consumer_config
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_entity
from taskstream.schemas.state import TERMINAL, TaskState
from taskstream.settings import Settings
from taskstream.topics import chaos_reader_group, task_changelog_topic


class Observer(threading.Thread):
    """Tails the task changelog from its beginning; ``done[task_id]``: the monotonic
    time the task was first seen terminal; ``status[task_id]``: its latest status."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="chaos-observer", daemon=True)
        self.settings = settings
        self.done: dict[str, float] = {}
        self.status: dict[str, str] = {}
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
        if state.status in TERMINAL and state.task_id not in self.done:
            self.done[state.task_id] = time.monotonic()

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
