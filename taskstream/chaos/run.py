"""One chaos run, start to end (D42, docs/chaos.md).

Order of steps, each wait bounded:

1. the processes (:class:`~taskstream.chaos.topology.Topology`): locally a 3-node
   Kafka, the topics, the replicas, the workers; against a deployment only our workers
   (on the ``chaos`` queue, registered if missing);
2. the observer (the task changelog, tailed), then the workload (a thread submitting
   the seeded mix and keeping the ledger) and the run's two schedules (created through
   the SDK, their creation in the ledger);
3. the seeded plan, fault after fault: each is injected at its planned time (or when
   the one before it healed, whichever is later), held, healed, and its canary waited
   for (recovery time);
4. the schedules are deleted once their latest ticks were seen (bounded), the workload
   stops; the run waits until every acknowledged task, and every task a tick
   submitted, is seen terminal (or ``drain_timeout_s``), then runs ``replay verify``,
   reads the events log to its end and the handlers' runs file, and checks the invariants
   (:mod:`taskstream.chaos.checker`);
5. the report: ``<out>/<stamp>.json`` and ``<stamp>.md``;
6. every process this run started is stopped (also on an error or Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskstream.chaos import schedule
from taskstream.chaos.checker import FaultRecord, Findings, check, load_runs, read_log
from taskstream.chaos.inject import Context, inject
from taskstream.chaos.observe import Observer
from taskstream.chaos.report import markdown, to_json
from taskstream.chaos.submitter import Submitter
from taskstream.chaos.tasks import QUEUE
from taskstream.chaos.topology import Topology
from taskstream.chaos.workload import Ledger, mix, schedules
from taskstream.errors import TaskstreamError
from taskstream.processors.replay.verify import explain, verify
from taskstream.producer.build import now_ms
from taskstream.settings import Settings

#: how long the runner waits for a fault's canary before going on (recorded as no
#: recovery; the canary is a ledger task, so the final check still counts it)
RECOVERY_TIMEOUT_S = 90.0
#: the processors' session timeout on a local run: a zombie must outlast it
SESSION_TIMEOUT_S = 6.0
#: the reads of replay verify and of the log check wait this long for a partition
VERIFY_KAFKA_TIMEOUT_S = 60.0
#: before deleting its schedules the run waits (this long at most) for a tick of each
#: fired at most TICK_FRESH_MS before: the platform is given its chance to be current,
#: so a tick the checker calls missed is not one the run cut off
TICK_WAIT_S = 60.0
TICK_FRESH_MS = 6_000


@dataclass(frozen=True)
class Options:
    seed: int = 1
    kinds: tuple[str, ...] = tuple(schedule.KINDS)
    faults: int = 36
    gap_s: float = 33.0
    first_at_s: float = 15.0
    min_duration_s: float = 0.0
    rate: float = 10.0
    replicas: int = 3
    workers: int = 3
    local: bool = True
    workdir: Path = Path(".taskstream/chaos")
    out_dir: Path | None = Path("bench/results/chaos")
    drain_timeout_s: float = 240.0
    verify_timeout_s: float = 180.0
    kafka_timeout_s: float = 240.0
    command: str = "taskstream chaos run"


@dataclass
class Outcome:
    report: dict[str, Any]
    findings: Findings
    paths: tuple[Path, ...]


def run_settings(base: Settings, options: Options, run_id: str) -> Settings:
    """The settings of a local run: its own prefix, 3 replicas of every topic, a short
    session timeout (failover and the zombie fault in seconds), a standby per task."""
    if not options.local:
        return base
    return base.model_copy(update={
        "topic_prefix": f"chaos-{run_id}.", "replication": 3, "partitions": 6,
        "ready_partitions": 3, "session_timeout_s": SESSION_TIMEOUT_S,
        "standby_replicas": 1, "queues": ["default", QUEUE],
        "data_dir": (options.workdir / "data").resolve()})


def run_chaos(base: Settings, options: Options, say: Callable[[str], None] = print
              ) -> Outcome:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_id = f"{options.seed}-{stamp.lower()}"
    workdir = (options.workdir / stamp).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    topo = Topology(run_settings(base, options, run_id), workdir, options.local,
                    workdir / "runs.jsonl")
    observer: Observer | None = None
    submitter: Submitter | None = None
    keep_log = False  # the brokers' data stays when an invariant broke: it is the evidence
    try:
        if options.local:
            say(f"Kafka: starting 3 nodes in {workdir / 'kafka'}")
            topo.start_kafka(options.kafka_timeout_s)
        topo.set_up_topics()
        if options.local:
            say(f"Processors: starting {options.replicas} replicas")
            topo.start_replicas(options.replicas)
        say(f"Workers: starting {options.workers}")
        for _ in range(options.workers):
            topo.start_worker()
        ledger = Ledger(workdir / "ledger.jsonl")
        observer = Observer(topo.settings)
        observer.start()
        submitter = Submitter(topo.settings, mix(options.seed, run_id), ledger, options.rate)
        submitter.start()
        planned = schedules(run_id)
        say(f"Schedules: creating {', '.join(sid for sid, _ in planned)}")
        submitter.create_schedules(planned)
        t0 = time.monotonic()
        records = _faults(Context(topo, submitter, options.seed), observer, options, t0, say)
        _sleep_until(t0 + options.min_duration_s)
        ids = [sid for sid, _ in planned]
        current = observer.wait_ticks_since(ids, now_ms() - TICK_FRESH_MS, TICK_WAIT_S)
        say(f"Schedules: deleting them ({'current' if current else 'NOT current'}: "
            f"{len(observer.tick_tasks(ids))} ticks seen)")
        submitter.delete_schedules()
        say("Workload: stopping; waiting for every acknowledged task to finish")
        submitter.finish(60.0)
        _heal(topo, options)
        started = time.monotonic()
        awaited = set(ledger.tasks()) | observer.tick_tasks(ids)
        left = observer.wait_done(awaited, options.drain_timeout_s)
        spent = time.monotonic() - started
        late = observer.tick_tasks(ids) - awaited  # ticks fired just before the deletion
        left |= observer.wait_done(late, max(10.0, options.drain_timeout_s - spent))
        awaited |= late
        say(f"Drained: {len(awaited) - len(left)} of {len(awaited)} tasks (ticks included) "
            "seen terminal")
        until = time.monotonic()
        verify_ok, detail = _verify(topo.settings, options, workdir)
        say(f"replay verify: {'clean' if verify_ok else 'NOT clean'} {detail[:200]}")
        facts = read_log(topo.settings, timeout=300.0)
        findings = check(ledger.tasks(), facts, load_runs(topo.runs_path), records,
                         topo.ended, topo.skewed, until, verify_ok, detail,
                         schedules=ledger.schedules())
        meta = {"stamp": stamp, "command": options.command, "seed": options.seed,
                "kinds": list(options.kinds), "duration_s": until - t0,
                "topology": _describe(topo, options), "rate": options.rate,
                "refused": ledger.refused, "submit_errors": submitter.errors[:20],
                "plan": [f.to_json() for f in schedule.make_plan(
                    options.seed, options.kinds, options.faults,
                    first_at_s=options.first_at_s, gap_s=options.gap_s)]}
        report = to_json(meta, records, findings, t0)
        keep_log = not findings.ok()
        return Outcome(report, findings, _write(report, options.out_dir, stamp))
    finally:
        try:
            if submitter is not None and submitter.is_alive():
                submitter.finish(10.0)  # deletes the schedules still live
            elif submitter is not None and submitter.live_schedules:
                try:  # none left firing on a deployment
                    submitter.delete_schedules()
                    submitter.producer.flush(10.0)
                except TaskstreamError as exc:
                    say(f"  the run's schedules could not be deleted: {exc}")
            if observer is not None:
                observer.close()
        finally:
            for line in topo.close(keep_kafka=keep_log):
                say(f"  {line}")
            if keep_log and options.local:
                say(f"Kafka data kept in {workdir / 'kafka'} (an invariant broke: the log "
                    "is the evidence; `taskstream kafka up --data-dir` it to read it)")


def _faults(ctx: Context, observer: Observer, options: Options, t0: float,
            say: Callable[[str], None]) -> list[FaultRecord]:
    plan = schedule.make_plan(options.seed, options.kinds, options.faults,
                              first_at_s=options.first_at_s, gap_s=options.gap_s)
    records = []
    for fault in plan:
        _sleep_until(t0 + fault.at_s)
        say(f"[{time.monotonic() - t0:6.0f} s] fault {fault.index}: {fault.kind}")
        record = inject(ctx, fault)
        if record.canary is not None:
            observer.wait_done({record.canary}, RECOVERY_TIMEOUT_S)
            done = observer.done.get(record.canary)
            record = dataclasses.replace(
                record, recovery_s=None if done is None else done - record.started)
        say(f"         {record.status}: {record.target or record.note}; recovery "
            f"{'-' if record.recovery_s is None else f'{record.recovery_s:.1f} s'}")
        records.append(record)
    return records


def _heal(topo: Topology, options: Options) -> None:
    """Every replica running and the planned number of workers alive (a fault's heal
    step may have failed; the final check must run on a whole platform)."""
    topo.restart_dead_brokers()
    for replica in topo.replicas:
        if replica.child is not None:
            replica.child.signal(signal.SIGCONT)  # a zombie fault that failed half way
        if replica.child is None or not replica.child.alive():
            topo.start_replica(replica)
    for _ in range(options.workers - len(topo.live_workers())):
        topo.start_worker()


def _verify(settings: Settings, options: Options, workdir: Path) -> tuple[bool, str]:
    """``replay verify`` with a patient reader (a machine loaded by the run itself can
    leave a partition's fetch unanswered for more than the default 10 s), tried twice."""
    patient = settings.model_copy(update={"kafka_timeout_s": VERIFY_KAFKA_TIMEOUT_S})
    failure = ""
    for _ in range(2):
        try:
            report = verify(patient, wait_timeout=options.verify_timeout_s, workdir=workdir)
            break
        except TaskstreamError as exc:
            failure = f"replay verify could not run: {exc}"
    else:
        return False, failure
    if report.mismatches:
        text = "\n".join(explain(settings, m) for m in report.mismatches[:3])
        return False, f"{len(report.mismatches)} of {report.tasks} entities differ:\n{text}"
    return True, f"{report.tasks} entities, {report.events} events"


def _describe(topo: Topology, options: Options) -> str:
    if not options.local:
        return f"a deployment at {topo.settings.bootstrap}, {options.workers} chaos workers"
    return (f"3 Kafka nodes (replication 3, min ISR 2), {options.replicas} processor "
            f"replicas (standby 1), {options.workers} workers")


def _write(report: dict[str, Any], out_dir: Path | None, stamp: str) -> tuple[Path, ...]:
    if out_dir is None:
        return ()
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stamp}.json"
    md_path = out_dir / f"{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def _sleep_until(at: float) -> None:
    left = at - time.monotonic()
    if left > 0:
        time.sleep(left)
