"""Child processes for ``taskstream dev`` and the benchmarks: start, wait, stop by PID.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches
only the parent, which then stops its children in order (workers before
processors, so nothing is left half done) with bounded waits: SIGTERM, then
SIGKILL after ``grace`` seconds. Every wait names what it waited for and, when
it fails, shows the tail of the child's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from taskstream.dev.errors import DevError
from taskstream.localkafka import cluster as localkafka
from taskstream.settings import Settings

HOST = "127.0.0.1"
LOG_TAIL_LINES = 25


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, outside the kernel's ephemeral
    range: a replica the fault harness restarts takes its port again
    (:func:`taskstream.localkafka.cluster.port_candidates` says why that matters)."""
    return localkafka.free_port_block(1)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def settings_env(settings: Settings, base: Mapping[str, str] | None = None,
                 pythonpath: Path | None = None) -> dict[str, str]:
    """The environment of a child: ``base`` (default os.environ) with the settings
    that matter to every process of one platform (same broker, prefix, partitions)."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("TASKSTREAM_")}
    env.update(
        TASKSTREAM_BOOTSTRAP=settings.bootstrap,
        TASKSTREAM_TOPIC_PREFIX=settings.topic_prefix,
        TASKSTREAM_PARTITIONS=str(settings.partitions),
        TASKSTREAM_READY_PARTITIONS=str(settings.ready_partitions),
        TASKSTREAM_REPLICATION=str(settings.replication),
        TASKSTREAM_PRIORITY_LEVELS=str(settings.priority_levels),
        TASKSTREAM_QUEUES='["' + '","'.join(settings.queues) + '"]',
        TASKSTREAM_STANDBY_REPLICAS=str(settings.standby_replicas),
        TASKSTREAM_KAFKA_HOME=str(settings.kafka_home),
        PYTHONUNBUFFERED="1",
    )
    if settings.session_timeout_s is not None:
        env["TASKSTREAM_SESSION_TIMEOUT_S"] = str(settings.session_timeout_s)
    env.update(storage_env(settings))
    env.update(security_env(settings))
    if settings.otlp_endpoint:  # one platform traces (and logs) the same way everywhere
        env["TASKSTREAM_OTLP_ENDPOINT"] = settings.otlp_endpoint
        env["TASKSTREAM_TRACE_SAMPLE_RATIO"] = str(settings.trace_sample_ratio)
    if settings.log_format != "text":
        env["TASKSTREAM_LOG_FORMAT"] = settings.log_format
    if pythonpath is not None:
        parts = [str(pythonpath), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def storage_env(settings: Settings) -> dict[str, str]:
    """The object storage and retention settings (issue 22), for every process of a platform."""
    env = {
        "TASKSTREAM_OFFLOAD_THRESHOLD_BYTES": str(settings.offload_threshold_bytes),
        "TASKSTREAM_RETENTION_BY_QUEUE": json.dumps(settings.retention_by_queue),
    }
    optional = {
        "TASKSTREAM_STORAGE_BUCKET": settings.storage_bucket,
        "TASKSTREAM_STORAGE_ENDPOINT": settings.storage_endpoint,
        "TASKSTREAM_STORAGE_REGION": settings.storage_region,
        "TASKSTREAM_RETENTION_S": settings.retention_s,
        "TASKSTREAM_STORAGE_ACCESS_KEY": settings.storage_access_key,
        "TASKSTREAM_STORAGE_SECRET_KEY": settings.storage_secret_key,
    }
    for name, value in optional.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[name] = str(value)
    return env


#: settings a child of the same platform must share to reach its brokers and read its data
#: (D25-D29): Kafka security, keyrings, the API's TLS and the bounds every part checks
SHARED_SECURITY = (
    "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "ssl_ca_file",
    "ssl_cert_file", "ssl_key_file", "ssl_key_password", "signing_keys", "signing_keyring_file",
    "payload_keys", "payload_keyring_file", "api_tls_cert", "api_tls_key", "api_ca_file",
    "api_tokens", "max_event_bytes", "max_payload_bytes", "max_headers", "max_header_bytes",
    "max_tags", "max_tag_bytes", "max_dependencies",
)


def security_env(settings: Settings) -> dict[str, str]:
    """``TASKSTREAM_*`` variables for the :data:`SHARED_SECURITY` settings that are set."""
    env = {}
    for name in SHARED_SECURITY:
        value = getattr(settings, name)
        if value is None or name not in settings.model_fields_set:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, dict):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"TASKSTREAM_{name.upper()}"] = text
    return env


@dataclass(frozen=True)
class ChildSpec:
    """What to run: a name for messages, the argv, where it logs, its env and cwd."""

    name: str
    argv: tuple[str, ...]
    log: Path
    env: Mapping[str, str]
    cwd: Path


def taskstream_argv(*args: str) -> tuple[str, ...]:
    """``python -m taskstream <args>`` with this interpreter."""
    return (sys.executable, "-m", "taskstream", *args)


class Child:
    """One running child process; stopped only through its own PID."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "ab") as log:
            self.proc = subprocess.Popen(
                list(spec.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(spec.env), cwd=spec.cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self, what: str) -> DevError:
        tail = log_tail(self.spec.log)
        return DevError(f"{self.name} (PID {self.pid}) {what}; last lines of {self.spec.log}:\n"
                        f"{tail or '(empty log)'}")

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float,
                   interval: float = 0.25) -> float:
        """Poll ``check`` until true; seconds waited. Fails if the child exits or time is up."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.alive():
                raise self.failure(f"exited with code {self.proc.returncode} before {what}")
            if check():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise self.failure(f"was not {what} within {timeout:g} s")
            time.sleep(interval)

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL now and reap (used to simulate a crash)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; the exit code (None if it never
        exited, which only a process stuck in the kernel can do)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET url`` answers 200 in time."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_processor(settings: Settings, data_dir: Path, web_port: int, log: Path, cwd: Path,
                    *, ready_timeout: float = 60.0, loglevel: str = "warning",
                    env: Mapping[str, str] | None = None) -> Child:
    """A processor replica (``taskstream processor``), returned once ``/readyz`` is 200.
    ``env``: more variables over :func:`settings_env`'s (a bench's other settings)."""
    child = Child(ChildSpec(
        f"processor :{web_port}",
        taskstream_argv("processor", "--web-port", str(web_port), "--data-dir", str(data_dir),
                        "--loglevel", loglevel),
        log, {**settings_env(settings), **(env or {})}, cwd))
    try:
        child.wait_until("ready (GET /readyz)",
                         lambda: http_ok(f"http://{HOST}:{web_port}/readyz"), ready_timeout)
    except BaseException:
        child.stop(5.0)
        raise
    return child


def start_worker(settings: Settings, app: str, log: Path, cwd: Path, *,
                 concurrency: int = 16, pool: str = "async", queues: Sequence[str] = (),
                 metrics_port: int | None = None, pythonpath: Path | None = None,
                 loglevel: str = "warning", reload: bool = False,
                 env: Mapping[str, str] | None = None) -> Child:
    """A worker (``taskstream worker -A app``, with ``--reload`` if asked). It is ready
    when its consumer group has joined; callers check that by running a task through.
    ``env``: more variables over :func:`settings_env`'s."""
    argv = ["worker", "-A", app, "--concurrency", str(concurrency), "--pool", pool,
            "--loglevel", loglevel, "--grace", "10", *(["--reload"] if reload else [])]
    if queues:
        argv += ["--queues", ",".join(queues)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    return Child(ChildSpec(f"worker {app}", taskstream_argv(*argv), log,
                           {**settings_env(settings, pythonpath=pythonpath or cwd),
                            **(env or {})}, cwd))


def stop_all(children: Sequence[Child], grace: float = 20.0) -> list[str]:
    """Stop ``children`` in the order given; a line per child saying how it ended."""
    report = []
    for child in children:
        was_alive = child.alive()
        code = child.stop(grace)
        state = "stopped" if was_alive else "had already exited"
        report.append(f"{child.name} (PID {child.pid}) {state}, exit code {code}")
    return report
