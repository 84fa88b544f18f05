"""``taskstream worker --reload``: a change to the task module drains and restarts the
worker, and no task is lost or run twice by it.

Given a processor replica and ``taskstream worker --reload`` running a task module
whose handler records every run (task ID, attempt, code version) in a file,
when tasks are submitted and the module is edited twice while they are in flight,
then every task SUCCEEDED exactly once, on attempt 1, its handler ran exactly once,
its ``TaskStarted`` is on the log once, and tasks ran under more than one code version.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from taskstream.dev.procs import settings_env, taskstream_argv
from taskstream.runners.reload import ReloadError, changed_files, watch_paths
from taskstream.schemas.ids import new_task_id
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from tests.harness import EventWriter, ProcessorProcess, StateReader, wait_for
from tests.test_worker_e2e import submitted
from tests.test_worker_support import Events

TASKS = 48
HANDLER_S = 0.6

MODULE = '''
import asyncio, json, os

from taskstream.workers import TaskApp, TaskContext

VERSION = {version}
app = TaskApp("reloadtasks")


@app.task(name="reloadtasks.work")
async def work(payload: dict, ctx: TaskContext) -> dict:
    line = json.dumps({{"task": ctx.task_id, "attempt": ctx.attempt, "version": VERSION,
                       "pid": os.getpid()}})
    fd = os.open(os.environ["RELOAD_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\\n").encode())   # one write: lines never interleave
    finally:
        os.close(fd)
    await asyncio.sleep({seconds})
    return {{"version": VERSION}}
'''


def write_module(package: Path, version: int) -> None:
    package.mkdir(exist_ok=True)
    (package / "__init__.py").touch()
    (package / "tasks.py").write_text(MODULE.format(version=version, seconds=HANDLER_S))


def runs(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- broker-free: what is watched ------------------------------------------------


def test_watch_paths_is_the_package_directory_or_the_module_file(tmp_path: Path) -> None:
    write_module(tmp_path / "pkgtasks", 1)
    (tmp_path / "single.py").write_text("x = 1\n")
    assert watch_paths("pkgtasks.tasks:app", cwd=tmp_path) == [tmp_path / "pkgtasks"]
    assert watch_paths("single", cwd=tmp_path) == [tmp_path / "single.py"]
    extra = tmp_path / "shared"
    extra.mkdir()
    assert watch_paths("single", [extra], cwd=tmp_path) == sorted(
        [tmp_path / "single.py", extra])


def test_watch_paths_refuses_a_module_it_cannot_find(tmp_path: Path) -> None:
    with pytest.raises(ReloadError, match="no module 'nosuchtasks'"):
        watch_paths("nosuchtasks.tasks", cwd=tmp_path)
    with pytest.raises(ReloadError, match="name a module"):
        watch_paths(":app", cwd=tmp_path)


def test_changed_files_lists_each_path_once() -> None:
    from watchfiles import Change

    assert changed_files({(Change.modified, "/a/b.py"), (Change.added, "/a/b.py"),
                          (Change.deleted, "/a/a.py")}) == ["/a/a.py", "/a/b.py"]


def test_dev_reload_starts_its_worker_with_reload(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    from taskstream.dev import procs as dev_procs
    from taskstream.settings import load_settings

    started: list[dev_procs.ChildSpec] = []
    monkeypatch.setattr(dev_procs, "Child", started.append)
    for reload in (False, True):
        dev_procs.start_worker(load_settings(), "examples.tasks", tmp_path / "w.log", tmp_path,
                               reload=reload)
    assert ["--reload" in spec.argv for spec in started] == [False, True]


def test_dev_command_passes_reload_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import taskstream.dev.platform as dev
    from taskstream.cli.main import main

    seen: list[bool] = []
    monkeypatch.setattr(dev, "run_dev", lambda settings, options, console: seen.append(
        options.reload))
    for args in (["dev"], ["dev", "--reload"]):
        assert CliRunner().invoke(main, args).exit_code == 0
    assert seen == [False, True]


# -- against the broker --------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reload_mid_flight_loses_no_task_and_runs_none_twice(topics: Settings,
                                                             tmp_path: Path) -> None:
    package, runs_file, log_path = tmp_path / "reloadtasks", tmp_path / "runs.jsonl", \
        tmp_path / "worker.log"
    write_module(package, 1)
    env = settings_env(topics, pythonpath=tmp_path)
    env["RELOAD_RUNS"] = str(runs_file)
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    events = Events(topics)
    with open(log_path, "ab") as log:
        supervisor = subprocess.Popen(
            [*taskstream_argv("worker", "-A", "reloadtasks.tasks", "--queues", "default",
                              "--concurrency", "4", "--grace", "60", "--loglevel", "info",
                              "--reload")],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def log_text() -> str:
            return log_path.read_text(errors="replace")

        wait_for("the first worker to join its group",
                 lambda: "event=partitions.assigned" in log_text(), timeout=60)
        writer, states = EventWriter(topics), StateReader(topics)
        ids = [new_task_id() for _ in range(TASKS)]
        for task_id in ids:
            writer.send(task_id, submitted("reloadtasks.work", {}, max_attempts=3,
                                           lease_ms=10_000))
        for version, generation in ((2, 2), (3, 3)):
            done_before = len(runs(runs_file))
            wait_for("more tasks to start under the running code",
                     lambda n=done_before: len(runs(runs_file)) >= n + 6, timeout=60)
            assert len(runs(runs_file)) < TASKS, "the edit must land while tasks are in flight"
            write_module(package, version)
            wait_for(f"worker generation {generation} to start",
                     lambda g=generation: f"event=reload.start generation={g}" in log_text(),
                     timeout=60)
        finals = {t: states.wait(t, lambda s: s.status is TaskStatus.SUCCEEDED,
                                 "to succeed", timeout=120) for t in ids}
        events.refresh()
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(90)
        replica.stop()
    assert code == 0, log_path.read_text(errors="replace")[-3000:]
    recorded = runs(runs_file)
    per_task = Counter(str(r["task"]) for r in recorded)
    assert set(per_task) == set(ids)
    assert [t for t, n in per_task.items() if n != 1] == [], "a handler ran twice"
    assert {r["attempt"] for r in recorded} == {1}
    assert all(s.attempt == 1 for s in finals.values())
    assert all(len(events.of(t, "TaskStarted")) == 1 for t in ids)
    versions = Counter(int(str(r["version"])) for r in recorded)
    pids = {r["pid"] for r in recorded}
    assert len(versions) >= 2 and len(pids) >= 2, (versions, pids)  # reloads really happened
    # the supervisor stopped each generation gracefully and said so
    text = log_path.read_text(errors="replace")
    assert "event=reload.stopped generation=1 code=0" in text
    assert "event=reload.stopped generation=2 code=0" in text
    assert "event=worker.abandoned" not in text
    events.close()

