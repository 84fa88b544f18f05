"""``taskstream dev``: the whole platform on this machine, a demo workload, a summary.

Order of steps (each wait is bounded and fails naming the log to read):

1. Kafka: a cluster recorded in ``.taskstream/kafka`` that runs, else the one at
   ``settings.bootstrap`` if it answers, else a new local broker started into
   ``.taskstream/kafka`` (:mod:`taskstream.localkafka.cluster`; the first run resolves
   the jars with Maven and shows its progress);
2. the platform's topics;
3. one processor replica (``taskstream processor``), ready when ``/readyz`` is 200;
   it serves the HTTP API and the dashboard (/ui);
4. one worker running ``examples/tasks.py``, ready when its consumer group has
   its partitions;
5. the demo workload (:mod:`taskstream.dev.workload`) through the SDK, a live
   progress bar fed by ``GET /tasks?since=...``, and the summary.

At the end, on Ctrl-C or SIGTERM, everything this run started is stopped by PID
in reverse order (worker, processor, Kafka), unless ``keep_running``: then the
PIDs are written to ``.taskstream/dev.json`` and ``taskstream dev --stop``
stops them later. Data stays in ``.taskstream/``; delete it to start afresh.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskstream.api.dashboard import UI_PATH
from taskstream.dev.errors import DevError
from taskstream.dev.procs import (
    HOST,
    Child,
    free_port,
    log_tail,
    port_is_free,
    start_processor,
    start_worker,
    stop_all,
)
from taskstream.dev.workload import STATES, Summary, demo_workload, render, summarize
from taskstream.kafka_config import client_config
from taskstream.localkafka import cluster as localkafka
from taskstream.producer.api_client import ApiClient
from taskstream.producer.errors import ApiUnavailableError
from taskstream.queue_registry import set_up_platform
from taskstream.schemas.state import TERMINAL
from taskstream.settings import Settings

STATE_FILE = "dev.json"
POLL_S = 0.5
PAGE = 1000


@dataclass(frozen=True)
class DevOptions:
    tasks: int = 200
    keep_running: bool = False
    workdir: Path = Path(".taskstream")
    app: str = "examples.tasks"
    app_path: Path | None = None  # put on the worker's PYTHONPATH; default: see _app_path
    timeout_s: float = 180.0  # for the workload to finish
    ready_timeout_s: float = 60.0
    kafka_timeout_s: float = 180.0
    concurrency: int = 16
    reload: bool = False  # the worker restarts when the task modules change


def _app_path(options: DevOptions) -> Path:
    """Where ``examples`` can be imported from: the cwd, else the source checkout."""
    if options.app_path is not None:
        return options.app_path.resolve()
    top = options.app.split(".")[0]
    for candidate in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (candidate / top).exists() or (candidate / f"{top}.py").exists():
            return candidate
    raise DevError(f"cannot find the module {options.app!r} of the demo tasks; run "
                   "`taskstream dev` at the root of a taskstream checkout or pass --app-path")


class Platform:
    """What one ``dev`` run started; ``stop()`` ends exactly that."""

    def __init__(self, workdir: Path, console: Console) -> None:
        self.workdir = workdir
        self.console = console
        self.children: list[Child] = []
        self.kafka_dir: Path | None = None  # set only when this run started Kafka

    def start_kafka(self, settings: Settings, timeout: float) -> Settings:
        kafka_dir = (self.workdir / "kafka").resolve()
        recorded = localkafka.read_state(kafka_dir)
        if recorded is not None and any(localkafka.is_running(n) for n in recorded.nodes):
            self.console.print(f"Kafka: using the one running from {kafka_dir} "
                               f"at {recorded.bootstrap}")
            return settings.model_copy(update={"bootstrap": recorded.bootstrap})
        answers = (localkafka.cluster_answers(client_config(settings), 3.0)
                   if recorded is None else None)
        if answers is not None:
            self.console.print(f"Kafka: using the broker at {settings.bootstrap}")
            return settings
        port = localkafka.default_port(settings)
        if recorded is None and not (port_is_free(port) and port_is_free(port + 1)):
            port = localkafka.free_port_block(2)
        self.console.print(f"Kafka: starting a local broker in {kafka_dir} "
                           "(the first run downloads the jars with Maven)")
        result = localkafka.up(settings, port=port, data_dir=kafka_dir, timeout=timeout,
                               show_progress=True)
        if not result.already_running:
            self.kafka_dir = kafka_dir
        pids = ", ".join(str(n.pid) for n in result.cluster.nodes)
        self.console.print(f"Kafka: up at {result.cluster.bootstrap} (PID {pids})")
        return settings.model_copy(update={"bootstrap": result.cluster.bootstrap})

    def stop(self) -> None:
        """Stop what this run started, last started first; bounded waits."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish cleaning up
        try:
            for line in stop_all(list(reversed(self.children))):
                self.console.print(f"  {line}")
            self.children.clear()
            if self.kafka_dir is not None:
                pids = localkafka.down(self.kafka_dir, keep=True) or []
                self.console.print(f"  Kafka (PID {', '.join(map(str, pids))}) stopped; its "
                                   f"data is kept in {self.kafka_dir}")
                self.kafka_dir = None
        finally:
            signal.signal(signal.SIGINT, previous)

    def record(self, api_url: str) -> Path:
        """Write what runs to ``dev.json`` so ``taskstream dev --stop`` can stop it."""
        path = self.workdir / STATE_FILE
        path.write_text(json.dumps({
            "api_url": api_url,
            "children": [{"name": c.name, "pid": c.pid, "argv": list(c.spec.argv)}
                         for c in self.children],
            "kafka_dir": str(self.kafka_dir) if self.kafka_dir else None,
        }, indent=2))
        return path


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def list_since(client: ApiClient, since_ms: int) -> dict[str, dict[str, Any]]:
    """Every task submitted since ``since_ms``, by ID (GET /tasks, all pages).

    Raises :class:`ApiUnavailableError` when the API cannot be reached or answers an error.
    """
    views: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"since": since_ms, "limit": PAGE}
        if cursor:
            params["cursor"] = cursor
        response = client.request("GET", "/tasks", params=params, timeout=10.0)
        if not response.ok:
            raise ApiUnavailableError(f"GET /tasks: HTTP {response.status_code}")
        body = response.data
        for item in body["items"]:
            views[item["task_id"]] = item
        cursor = body.get("next_cursor")
        if not cursor:
            return views


def _wait_for_worker(worker: Child, timeout: float) -> None:
    def assigned() -> bool:
        try:
            return "event=partitions.assigned" in worker.spec.log.read_text(errors="replace")
        except OSError:
            return False

    worker.wait_until("assigned its queue's partitions", assigned, timeout)


def _submit(settings: Settings, options: DevOptions) -> tuple[dict[str, str], int]:
    from taskstream.producer import TaskProducer

    workload = demo_workload(options.tasks)
    since_ms = int(time.time() * 1000) - 1
    with TaskProducer(settings, source="taskstream-dev") as producer:
        handles = producer.submit_many([t.spec for t in workload])
        producer.flush(settings.kafka_timeout_s)
    return {h.task_id: t.kind for h, t in zip(handles, workload, strict=True)}, since_ms


def _watch(api_url: str, kinds: dict[str, str], since_ms: int, timeout: float,
           console: Console) -> dict[str, dict[str, Any]]:
    """Show progress until every task is terminal or ``timeout``; the last views seen."""
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    columns = (TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.description}"))
    client = ApiClient(api_url, token=None)
    with closing(client), Progress(*columns, console=console) as bar:
        job = bar.add_task("", total=len(kinds))
        while True:
            try:
                seen = list_since(client, since_ms)
                views = {t: seen[t] for t in kinds if t in seen}
            except ApiUnavailableError:
                pass  # a 503 during a rebalance, or a slow answer: try again next tick
            counts = {s: 0 for s in STATES}
            for v in views.values():
                counts[v["status"]] = counts.get(v["status"], 0) + 1
            done = sum(counts[s] for s in TERMINAL)
            text = "  ".join(f"{s.lower()} {n}" for s, n in counts.items() if n)
            bar.update(job, completed=done, description=text)
            if done == len(kinds) or time.monotonic() > deadline:
                return views
            time.sleep(POLL_S)


def run_dev(settings: Settings, options: DevOptions, console: Console | None = None) -> Summary:
    """Run the whole demo; returns the summary (raises DevError when it did not finish)."""
    console = console or Console()
    workdir = options.workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    app_path = _app_path(options)
    platform = Platform(workdir, console)
    finished = False
    with _sigterm_as_interrupt():
        try:
            summary = _run(settings, options, platform, app_path, console)
            finished = True
            return summary
        except KeyboardInterrupt:
            console.print("Interrupted: stopping what taskstream dev started")
            raise
        finally:
            if options.keep_running and finished:
                _say_how_to_stop(platform, console)
            else:
                platform.stop()
                (workdir / STATE_FILE).unlink(missing_ok=True)


def _run(settings: Settings, options: DevOptions, platform: Platform, app_path: Path,
         console: Console) -> Summary:
    workdir = platform.workdir
    settings = platform.start_kafka(settings, options.kafka_timeout_s)
    web_port = settings.web_port if port_is_free(settings.web_port) else free_port()
    api_url = f"http://{HOST}:{web_port}"
    settings = settings.model_copy(update={
        "web_port": web_port, "api_url": api_url, "data_dir": workdir / "processor"})
    created, _ = set_up_platform(settings)  # the settings' queues registered too
    console.print(f"Topics: {sum(created.values())} created, "
                  f"{len(created) - sum(created.values())} already there "
                  f"(prefix {settings.topic_prefix!r})")
    console.print("Processor: starting (folds the events topic, serves the API)")
    platform.children.append(start_processor(
        settings, workdir / "processor", web_port, workdir / "logs" / "processor.log",
        app_path, ready_timeout=options.ready_timeout_s, loglevel="info"))
    console.print(f"Dashboard: {api_url}{UI_PATH} (open it to watch the demo)")
    metrics_port = free_port()
    console.print(f"Worker: starting {options.app} (concurrency {options.concurrency})")
    worker = start_worker(settings, options.app, workdir / "logs" / "worker.log", app_path,
                          concurrency=options.concurrency, metrics_port=metrics_port,
                          loglevel="info", reload=options.reload)
    platform.children.append(worker)
    _wait_for_worker(worker, options.ready_timeout_s)
    started = time.monotonic()
    kinds, since_ms = _submit(settings, options)
    console.print(f"Submitted {len(kinds)} demo tasks: fast (priority 0 and 2), slow, "
                  "flaky (fail twice), one poison, delayed")
    views = _watch(api_url, kinds, since_ms, options.timeout_s, console)
    urls = {"dashboard": f"{api_url}{UI_PATH}", "API": api_url,
            "API docs": f"{api_url}/openapi.json",
            "metrics": f"{api_url}/metrics",
            "worker metrics": f"http://{HOST}:{metrics_port}/metrics",
            "logs": str(workdir / "logs")}
    summary = summarize(views, kinds, time.monotonic() - started, urls)
    for line in render(summary):
        console.print(line, highlight=False)
    (workdir / "dev-summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    if summary.finished < summary.tasks:
        raise DevError(
            f"only {summary.finished} of {summary.tasks} tasks finished within "
            f"{options.timeout_s:g} s; see the logs in {workdir / 'logs'}:\n"
            f"processor: {log_tail(workdir / 'logs' / 'processor.log', 5)}\n"
            f"worker: {log_tail(workdir / 'logs' / 'worker.log', 5)}")
    if options.keep_running:
        platform.record(api_url)
    return summary


def _say_how_to_stop(platform: Platform, console: Console) -> None:
    pids = ", ".join(str(c.pid) for c in platform.children)
    console.print(f"Still running (PIDs {pids}"
                  + (", and Kafka" if platform.kafka_dir else "")
                  + "). Stop it all with: taskstream dev --stop")


def _is_ours(pid: int, argv: list[str]) -> bool:
    """True while ``pid`` still runs the command we recorded (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [a.decode(errors="replace") for a in cmdline if a] == argv


def stop_recorded(workdir: Path, console: Console, grace: float = 20.0) -> bool:
    """Stop what ``dev --keep-running`` left running; False if nothing was recorded."""
    path = workdir.resolve() / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    for child in reversed(state["children"]):
        pid, argv = int(child["pid"]), list(child["argv"])
        if not _is_ours(pid, argv):
            console.print(f"  {child['name']} (PID {pid}) is not running")
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _is_ours(pid, argv) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_ours(pid, argv):
            os.kill(pid, signal.SIGKILL)
        console.print(f"  {child['name']} (PID {pid}) stopped")
    if state.get("kafka_dir"):
        pids = localkafka.down(Path(state["kafka_dir"]), keep=True) or []
        console.print(f"  Kafka (PID {', '.join(map(str, pids))}) stopped")
    path.unlink()
    return True
