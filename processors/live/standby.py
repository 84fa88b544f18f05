"""Warm copies of other replicas' partitions, kept by reading their changelog in batches.

A standby copy makes failover fast: when a partition moves here, Faust's recovery
reads its changelog only past the offset persisted in the local RocksDB. Faust
keeps standbys by reading the changelog through its own consumer, one record at a
time through its stream machinery; with two replicas that cost each replica more
CPU per task than its own fold (measured: 0.75-0.8 ms per task on each of two
replicas against 0.5 ms for one replica alone, issue 12). So Faust is told to keep
no standbys (``table_standby_replicas=0``) and this follower keeps them instead
(docs/decisions.md, D19): a confluent-kafka consumer, assigned by hand, reads
the changelog partitions of the copies this replica keeps and writes each batch to
the partition's RocksDB in one write batch, the persisted changelog offset
(Faust's own key) in the same batch, so a copy and its offset never disagree.

Which copies: for each partition, the ``standby_replicas`` replicas after its
owner in the sorted list of replicas (:func:`standby_partitions`); every replica
computes the same answer from the assignment Faust gives all of them.

The follower runs on a thread of its own; it is stopped before Faust revokes or
restores anything (the processor stops it when partitions are revoked, and starts
it again once the next generation's recovery is complete), and holds no
reference to a partition's database once stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from rocksdict import WriteBatch

log = logging.getLogger("taskstream.processor")

#: the longest one wait for changelog records lasts (also how soon a stop is seen)
POLL_WAIT_S = 0.2
#: the most records written in one batch
MAX_BATCH = 2_000


def standby_partitions(owners: Mapping[int, str], me: str, copies: int) -> set[int]:
    """The partitions whose copy ``me`` keeps: for each partition, the ``copies``
    replicas after its owner in the sorted list of replicas (never the owner)."""
    hosts = sorted(set(owners.values()) | {me})
    if copies <= 0 or len(hosts) < 2:
        return set()
    mine = set()
    for partition, owner in owners.items():
        start = hosts.index(owner)
        keepers = {hosts[(start + k) % len(hosts)] for k in range(1, copies + 1)} - {owner}
        if me in keepers:
            mine.add(partition)
    return mine


class StandbyFollower:
    """Keeps the copies of some partitions of the table's changelog up to date."""

    def __init__(self, consumer_config: dict[str, Any], changelog_topic: str,
                 offset_key: bytes, persisted_offset: Callable[[int], int | None]) -> None:
        self._config = consumer_config
        self._topic = changelog_topic
        self._offset_key = offset_key
        self._persisted_offset = persisted_offset
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.partitions: frozenset[int] = frozenset()

    def start(self, dbs: Mapping[int, Any]) -> None:
        """Follow the partitions of ``dbs`` (partition -> its open RocksDB)."""
        self.stop()
        if not dbs:
            return
        self.partitions = frozenset(dbs)
        starts = {}
        for partition in dbs:
            offset = self._persisted_offset(partition)
            starts[partition] = offset + 1 if offset is not None else OFFSET_BEGINNING
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(dict(dbs), starts, self._stop),
            name="taskstream-standby", daemon=True)
        self._thread.start()
        log.info("keeping standby copies of partitions %s", sorted(dbs))

    def stop(self, timeout_s: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        self.partitions = frozenset()
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("the standby follower did not stop within %.0fs", timeout_s)

    def _run(self, dbs: dict[int, Any], starts: dict[int, int],
             stop: threading.Event) -> None:
        consumer = Consumer(self._config)
        try:
            consumer.assign([TopicPartition(self._topic, p, o) for p, o in starts.items()])
            while not stop.is_set():
                records = consumer.consume(MAX_BATCH, POLL_WAIT_S)
                if records:
                    self._apply(records, dbs)
        except Exception:  # a copy that falls behind only makes a failover slower
            log.exception("the standby follower stopped; copies of %s fall behind",
                          sorted(dbs))
        finally:
            consumer.close()
            dbs.clear()  # no reference to a partition's database outlives the follower

    def _apply(self, records: Iterable[Any], dbs: dict[int, Any]) -> None:
        batches: dict[int, tuple[Any, int]] = {}
        for msg in records:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("standby follower: %s", err)
                continue
            partition = msg.partition()
            entry = batches.get(partition)
            batch = entry[0] if entry is not None else WriteBatch(raw_mode=True)
            value = msg.value()
            if value is None:
                batch.delete(msg.key())
            else:
                batch.put(msg.key(), value)
            batches[partition] = (batch, msg.offset())
        for partition, (batch, offset) in batches.items():
            batch.put(self._offset_key, str(offset).encode())
            dbs[partition].write(batch)
