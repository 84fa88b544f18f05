"""A rig for the durability tests: real processes, a real broker that refuses, and the
checks that must hold after any fault.

Everything is black box on purpose, so the tests outlive a rewrite of the fold (issue
12): processor replicas and workers run as subprocesses (a replica can be armed with
fault points, taskstream/faults.py), tasks go in through the SDK, the broker is made to
refuse writes with a topic config, and the checks read only the log, a fresh replica's
HTTP API and ``replay verify``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from taskstream.admin import TopicSpec, admin_client, create_topics, list_topics
from taskstream.dev.procs import settings_env
from taskstream.errors import TopicError
from taskstream.faults import ENV as FAULTS_ENV
from taskstream.processors.fold.lifecycle import apply
from taskstream.processors.replay.verify import VerifyReport, explain, verify
from taskstream.producer import TaskProducer
from taskstream.queue_registry import register_queues
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import TaskSucceeded
from taskstream.schemas.ids import new_event_id
from taskstream.schemas.serde import decode_event
from taskstream.schemas.state import TaskState, TaskStatus
from taskstream.settings import Settings
from taskstream.topics import events_topic, quarantine_topic
from tests.harness import (
    EventWriter,
    ProcessorProcess,
    StateReader,
    TopicReader,
    stop_process,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
#: how long a processor's producer waits for an acknowledgement before a send is reported
#: failed (settings.delivery_timeout_s): short, so a refusal shows within the test
DELIVERY_TIMEOUT_S = 3


class Rig:
    """One platform on the test's topics: replicas, workers and a submitting client."""

    def __init__(self, settings: Settings, base: Path) -> None:
        self.settings = settings
        self.base = base
        self.replicas: list[ProcessorProcess] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.producer = TaskProducer(settings)
        self._states: StateReader | None = None

    # -- processes ------------------------------------------------------------------

    def replica(self, name: str, faults: str = "", start: bool = True,
                ready_timeout: float = 90.0) -> ProcessorProcess:
        """A processor replica with its own data dir ``base/name`` (the same name: the same
        dir), armed with ``faults`` (TASKSTREAM_FAULTS syntax)."""
        env = {"TASKSTREAM_DELIVERY_TIMEOUT_S": str(DELIVERY_TIMEOUT_S)}
        if faults:
            env[FAULTS_ENV] = faults
        replica = ProcessorProcess(self.settings, self.base / name, env=env)
        self.replicas.append(replica)
        return replica.start(ready_timeout) if start else replica

    def worker(self, queues: Iterable[str] = ("default",), concurrency: int = 64
               ) -> subprocess.Popen[bytes]:
        log = self.base / f"worker{len(self.workers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "taskstream", "worker", "-A", "examples.tasks",
                 "--queues", ",".join(queues), "--concurrency", str(concurrency)],
                cwd=ROOT, env=settings_env(self.settings), stdout=out,
                stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            stop_process(proc)

    def close(self) -> None:
        self.stop_workers()
        for replica in self.replicas:
            replica.stop()
        self.producer.close(10)
        if self._states is not None:
            self._states.reader.close()

    def register(self, *queues: str) -> None:
        """Register queues (as ``topics create --queues`` or ``POST /queues`` would)."""
        register_queues(self.settings, queues)

    # -- load -----------------------------------------------------------------------

    def submit(self, n: int, queue: str = "default", rate: float | None = None) -> list[str]:
        """``n`` no-op tasks, at ``rate`` per second when given; returns once all are
        acknowledged by the broker."""
        ids: list[str] = []
        started = time.monotonic()
        for i in range(n):
            if rate is not None:
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            ids.append(self.producer.submit("examples.noop", None, queue=queue).task_id)
        self.producer.flush(60)
        return ids

    def submit_until_dead(self, replica: ProcessorProcess, batch: int = 20,
                          timeout: float = 120.0) -> list[str]:
        """Submit tasks, ``batch`` at a time, until ``replica`` has exited (a fault point
        killed it), so the fault strikes while records flow."""
        assert replica.proc is not None
        ids: list[str] = []
        deadline = time.monotonic() + timeout
        while replica.proc.poll() is None:
            assert time.monotonic() < deadline, f"the replica still runs after {timeout:g}s"
            ids += self.submit(batch)
            time.sleep(0.05)
        return ids

    # -- what the log and the live tables say ------------------------------------------

    @property
    def states(self) -> StateReader:
        """Task states as the changelog holds them (what a fresh replica restores)."""
        if self._states is None:
            self._states = StateReader(self.settings)
        return self._states

    def wait_succeeded(self, task_ids: Iterable[str], timeout: float = 120.0) -> None:
        wanted = set(task_ids)

        def done() -> bool:
            states = self.states.refresh()
            return all(t in states and states[t].status is TaskStatus.SUCCEEDED
                       for t in wanted)

        try:
            wait_for(f"{len(wanted)} tasks to succeed", done, timeout=timeout, interval=0.5)
        except AssertionError:
            states = self.states.states
            late = {t: states[t].status.value if t in states else "absent" for t in wanted
                    if t not in states or states[t].status is not TaskStatus.SUCCEEDED}
            raise AssertionError(f"{len(late)} of {len(wanted)} tasks did not succeed in "
                                 f"{timeout:g}s: {dict(list(late.items())[:10])}") from None

    def verify_clean(self, wait_timeout: float = 90.0) -> VerifyReport:
        """``replay verify``: the task changelog (what a fresh replica restores) is
        exactly the fold of the events topic."""
        report = verify(self.settings, wait_timeout=wait_timeout, workdir=self.base)
        assert report.mismatches == (), (
            f"{len(report.mismatches)} of {report.tasks} tasks differ from the fold of the "
            "log:\n" + "\n".join(explain(self.settings, m) for m in report.mismatches[:3]))
        return report

    def check_fresh_replica(self, task_ids: Iterable[str], timeout: float = 120.0) -> None:
        """Every other replica stops; a replica on a new data dir restores from the
        changelog and its live API shows every task SUCCEEDED; ``replay verify`` is clean;
        the log holds exactly one accepted completion per task."""
        wanted = set(task_ids)
        for replica in self.replicas:
            replica.stop()
        fresh = self.replica(f"fresh{len(self.replicas)}")
        counts: dict[str, int] = {}

        def all_succeeded() -> bool:
            counts.update(live_counts(fresh.url))
            return counts.get("SUCCEEDED", 0) >= len(wanted)

        try:
            wait_for("the fresh replica", all_succeeded, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(f"a fresh replica restored from the changelog shows {counts} "
                                 f"after {timeout:g}s, not {len(wanted)} SUCCEEDED") from None
        self.verify_clean()
        self.check_one_completion_each(wanted)

    def check_one_completion_each(self, task_ids: Iterable[str]) -> None:
        accepted = accepted_completions(self.settings)
        wrong = {t: accepted.get(t, 0) for t in task_ids if accepted.get(t, 0) != 1}
        assert wrong == {}, f"tasks without exactly one accepted completion: {wrong}"

    def check_fresh_replica_holds(self, task_ids: Iterable[str], timeout: float = 600.0
                                  ) -> None:
        """Every replica and worker stops; a fresh replica on a new data dir, once idle
        (``replay verify`` waits for that), holds exactly the fold of the log and its live
        API counts every task; then a worker finishes each of them once."""
        wanted = set(task_ids)
        self.stop_workers()
        for replica in self.replicas:
            replica.stop()
        fresh = self.replica(f"fresh{len(self.replicas)}")
        self.verify_clean(wait_timeout=timeout)
        counts = live_counts(fresh.url)
        assert sum(counts.values()) == len(wanted), (
            f"the fresh replica shows {counts}, not {len(wanted)} tasks")
        self.worker()
        self.wait_succeeded(wanted, timeout=timeout)
        self.verify_clean(wait_timeout=timeout)
        self.check_one_completion_each(wanted)


def stop_hard(*procs: subprocess.Popen[bytes] | None, grace_s: float = 1.0) -> None:
    """SIGTERM every process, then SIGKILL whichever still runs ``grace_s`` later (an
    orchestrator whose grace period is shorter than the backlog takes to drain)."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for proc in live:
        proc.terminate()
    time.sleep(grace_s)
    for proc in live:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def live_counts(url: str) -> dict[str, int]:
    """Tasks by status in one replica's live tables (its /internal/queues answer)."""
    try:
        rows = httpx.get(f"{url}/internal/queues", timeout=10).json()["rows"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    counts: dict[str, int] = {}
    for _queue, status, _priority, n in rows:
        counts[status] = counts.get(status, 0) + n
    return counts


def accepted_completions(settings: Settings) -> dict[str, int]:
    """Task ID -> how many of its TaskSucceeded events the fold of the log accepted
    (records that do not decode are the quarantine's, not the fold's: left out)."""
    reader = TopicReader(settings, events_topic(settings))
    states: dict[str, TaskState] = {}
    accepted: dict[str, int] = {}
    try:
        while batch := reader.poll_raw(2.0):
            for _key, value, _partition, _offset in batch:
                try:
                    env = decode_event(value or b"")
                except DecodeError:
                    continue
                before = states.get(env.task_id)
                after, _ = apply(before, env)
                if after is None:
                    continue
                states[env.task_id] = after
                if (isinstance(env.body, TaskSucceeded) and after.status is TaskStatus.SUCCEEDED
                        and (before is None or before.status is not TaskStatus.SUCCEEDED)):
                    accepted[env.task_id] = accepted.get(env.task_id, 0) + 1
    finally:
        reader.close()
    return accepted


class Poison:
    """Records no reader can decode, written to the events topic: the processor must
    copy each one to the quarantine topic and go on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer = EventWriter(settings)
        self.keys: set[bytes] = set()

    def send(self, n: int) -> None:
        for _ in range(n):
            key = f"poison-{new_event_id()}".encode()
            self.writer.producer.produce(events_topic(self.settings), key=key,
                                         value=b"not an envelope")
            self.keys.add(key)
        assert self.writer.producer.flush(30) == 0

    def wait_quarantined(self, timeout: float = 120.0) -> None:
        """Every poison record is on the quarantine topic (a repeat is allowed: a record
        read again after a crash is quarantined again)."""
        reader = TopicReader(self.settings, quarantine_topic(self.settings))
        seen: set[bytes] = set()

        def all_there() -> bool:
            seen.update(k for k, _, _, _ in reader.poll_raw(0.5) if k is not None)
            return self.keys <= seen

        try:
            wait_for("the poison records on the quarantine topic", all_there,
                     timeout=timeout, interval=0.1)
        except AssertionError:
            raise AssertionError(f"{len(self.keys - seen)} of {len(self.keys)} undecodable "
                                 "records never reached the quarantine topic") from None
        finally:
            reader.close()


# -- a broker that refuses ------------------------------------------------------------


@contextmanager
def refusing(settings: Settings, topic: str) -> Iterator[None]:
    """The broker refuses every write to ``topic`` until the block ends: its
    ``max.message.bytes`` is set below any record batch (MESSAGE_TOO_LARGE, the answer a
    record over the topic's limit gets), then set back. The block starts, and ends, once
    the broker reports the new value (nothing is written to find out: a probe record
    would be one more record in the topic under test)."""
    client = admin_client(settings).client
    resource = ConfigResource(ResourceType.TOPIC, topic)

    def current() -> str:
        return str(client.describe_configs([resource])[resource].result(30)
                   ["max.message.bytes"].value)

    def alter(value: str) -> None:
        entry = ConfigEntry("max.message.bytes", value,
                            incremental_operation=AlterConfigOpType.SET)
        target = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
        client.incremental_alter_configs([target])[target].result(30)
        wait_for(f"max.message.bytes={value} on {topic}", lambda: current() == value,
                 timeout=30, interval=0.2)

    before = current()
    alter("1")
    try:
        yield
    finally:
        alter(before)


@contextmanager
def missing(settings: Settings, spec: TopicSpec) -> Iterator[None]:
    """The topic of ``spec`` is deleted until the block ends, then made again empty: a
    producer's send waits for its metadata and fails (UNKNOWN_TOPIC_OR_PARTITION)."""
    client = admin_client(settings).client
    client.delete_topics([spec.name], operation_timeout=30)[spec.name].result(60)
    wait_for(f"{spec.name} to be gone", lambda: spec.name not in list_topics(settings, client),
             timeout=30, interval=0.2)
    try:
        yield
    finally:
        wait_for(f"{spec.name} to be made again",
                 lambda: _create_again(settings, spec), timeout=60, interval=0.5)


def _create_again(settings: Settings, spec: TopicSpec) -> bool:
    try:
        create_topics(settings, [spec])
    except TopicError:  # still marked for deletion: try again
        return False
    return True


def died_of_fault(replica: ProcessorProcess, point: str, timeout: float = 120.0) -> None:
    """Wait until ``replica`` killed itself at the fault point ``point``."""
    assert replica.proc is not None
    proc = replica.proc
    wait_for(f"the replica to die at {point}", lambda: proc.poll() is not None,
             timeout=timeout, interval=0.2)
    assert proc.returncode == -9, f"exit {proc.returncode}, not SIGKILL:\n{replica.log()[-3000:]}"
    assert f"taskstream fault: {point} hit" in replica.log()
