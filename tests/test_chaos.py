"""The short seeded chaos run CI makes (issue 21, D42): a 3-node Kafka, two processor
replicas, two workers, the mixed workload with its two schedules, and the faults that
hold on main today; every invariant asserted, one firing per schedule tick included.
``make chaos`` is the full run (docs/chaos.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskstream.chaos import schedule
from taskstream.chaos.run import Options, run_chaos
from taskstream.settings import Settings, load_settings
from tests.harness import ProcessorProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: the faults CI injects: those that keep every invariant on main today. The others run
#: in the full run (`make chaos`); docs/chaos.md ("What holds today") names the invariant
#: each breaks, and the lead adds it here once the fix it waits for is merged. Worker kill
#: is back since D49 (an attempt whose lease ran out is withdrawn, so the partition's next
#: owner no longer starts it beside the key's new holders)
SHORT_KINDS = (schedule.REPLICA_KILL, schedule.WORKER_KILL, schedule.REPLICA_WIPE,
               schedule.PRODUCER_DUP, schedule.CLOCK_SKEW, schedule.REPLICA_ZOMBIE)
SEED = 21


@pytest.mark.timeout(900)
def test_short_seeded_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    settings = load_settings()
    options = Options(seed=SEED, kinds=SHORT_KINDS, faults=len(SHORT_KINDS), gap_s=12.0,
                      first_at_s=8.0, rate=5.0, replicas=2, workers=2, workdir=tmp_path,
                      out_dir=tmp_path / "report", drain_timeout_s=180.0,
                      command="tests/test_chaos.py")
    outcome = run_chaos(settings, options, print)
    report, found = outcome.report, outcome.findings
    statuses = {"done"} if os.environ.get("CI") == "true" else {"done", "not-run"}
    assert [(f["kind"], f["status"], f["note"]) for f in report["faults"]
            if f["status"] not in statuses] == []
    assert report["faults_injected"] >= 1 and found.tasks > 0
    assert found.lost == [], f"lost: {found.not_terminal_status}"
    assert found.double_accepted == {}
    assert [(e.task_id, e.kind, e.why) for e in found.unattributed] == []
    assert found.verify_ok, found.verify_detail
    assert found.limit_max <= found.limit_allowed
    ticks = report["schedule_ticks"]
    assert len(ticks["schedules"]) == 2 and ticks["fired"] > 0, ticks
    assert found.invariants()["one firing per schedule tick"] is True, ticks
    assert found.ok()
    assert {p.suffix for p in outcome.paths} == {".json", ".md"}


def test_against_a_deployment_only_our_own_processes_are_faulted(topics: Settings,
                                                                   tmp_path: Path) -> None:
    """``chaos run --bootstrap``: the platform is someone else's (here a replica this
    test runs on the session's broker); the run starts only its workers and producers,
    injects the faults it can there and reports the others as not run."""
    replica = ProcessorProcess(topics, tmp_path / "replica").start(ready_timeout=120)
    try:
        options = Options(seed=SEED, kinds=(schedule.CLOCK_SKEW, schedule.REPLICA_KILL,
                                            schedule.PRODUCER_DUP),
                          faults=3, gap_s=8.0, first_at_s=5.0, rate=3.0, workers=1,
                          local=False, workdir=tmp_path, out_dir=None, drain_timeout_s=120.0,
                          command="tests/test_chaos.py (deployment)")
        outcome = run_chaos(topics, options, print)
    finally:
        replica.stop()
    statuses = {f["kind"]: f["status"] for f in outcome.report["faults"]}
    assert statuses == {"clock-skew": "done", "replica-kill": "not-run",
                        "producer-dup": "done"}
    assert outcome.findings.ok(), outcome.findings.invariants()
    assert outcome.paths == ()
