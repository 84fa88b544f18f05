"""The Dockerfile, exercised without a Docker engine.

Given the build context that .dockerignore lets through, when the ``build`` stage's
RUN steps run in a fresh virtualenv (``$VENV`` pointed at a temporary directory,
the same commands, in order), then the runtime stage's ENTRYPOINT, run with the
runtime stage's environment from a copy of its working directory, serves as the
processor, the worker and the CLI against the real broker: the compose file's own
commands create the topics, run a processor and a worker, and a task succeeds.

Not exercised (no engine): the base image itself, the runtime stage's user creation
(needs root on the image), COPY --from ownership, and the image's size.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from taskstream.dev.procs import free_port
from taskstream.settings import Settings
from tests.deploy_support import (
    ROOT,
    DockerIgnore,
    Stage,
    build_context,
    copy_context,
    parse_dockerfile,
)
from tests.harness import wait_for

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


# -- broker-free: the files themselves -------------------------------------------------


def test_two_stages_on_one_base_and_a_non_root_user() -> None:
    args, (build, runtime) = stages()
    # the virtualenv is copied between stages: both must have the same Python at one path
    assert build.base == runtime.base == args["PYTHON_IMAGE"]
    assert "slim" in build.base and build.name == "build"
    user = runtime.all("USER")
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) > 0
    assert json.loads(runtime.all("ENTRYPOINT")[0]) == ["taskstream"]
    # the runtime stage installs nothing: its one RUN makes the user and its data directory
    (run,) = runtime.all("RUN")
    assert run.startswith("groupadd") and "pip" not in run and "apt" not in run
    assert runtime.all("COPY") == ["--from=build /opt/taskstream /opt/taskstream",
                                   "--from=build /src/examples /app/examples"]


def test_install_uses_the_constraints_and_binary_wheels_only() -> None:
    _, (build, _) = stages()
    installs = [r for r in build.all("RUN") if "pip" in r and "install" in r]
    assert len(installs) == 1
    assert "-c constraints.txt" in installs[0] and "--only-binary=:all:" in installs[0]


def test_the_context_holds_the_package_and_nothing_private() -> None:
    files = set(build_context())
    assert {"pyproject.toml", "constraints.txt", "README.md", "examples/tasks.py",
            "taskstream/settings.py", "workers/worker.py"} <= files
    for rel in files:
        assert not rel.startswith((".git/", ".venv/", "tests/", ".ci-build/", ".taskstream/"))
        assert "__pycache__" not in rel and not rel.endswith(".pyc")
    # every package folder pyproject maps is in the context (a missed one fails the build)
    import tomllib
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in set(mapping["package-dir"].values()):
        assert f"{folder}/__init__.py" in files, folder


def test_dockerignore_rules_follow_docker() -> None:
    ignore = DockerIgnore("*\n!keep\n**/__pycache__\n!keep/x/__pycache__/ok.pyc\n")
    assert ignore.excluded("other.txt") and ignore.excluded("dir/file")
    assert not ignore.excluded("keep/a.py") and not ignore.excluded("keep")
    assert ignore.excluded("keep/__pycache__/a.pyc")
    assert not ignore.excluded("keep/x/__pycache__/ok.pyc")  # the last match decides


# -- the install and the entrypoint, in a fresh virtualenv -----------------------------


def _run_build_stage(build: Stage, src: Path, venv: Path, shim: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TASKSTREAM_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(build.env())
    env["VENV"] = str(venv)
    # the image's `python` is the base image's 3.11; here: this interpreter's base
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    # PIP_NO_CACHE_DIR keeps the image small; here it would only re-download every wheel
    env.pop("PIP_NO_CACHE_DIR", None)
    for run in build.all("RUN"):
        done = subprocess.run(["sh", "-c", run], cwd=src, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        assert done.returncode == 0, f"RUN {run}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _shim_python(shim: Path) -> None:
    shim.mkdir()
    base = Path(getattr(sys, "_base_executable", sys.executable))
    (shim / "python").symlink_to(base)


def _compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"][service]["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def _on_a_free_port(command: list[str]) -> list[str]:
    """``command`` with its fixed ``--metrics-port`` (a container has the port to itself)
    moved to a free one: other test runs on this machine may hold the fixed port."""
    if "--metrics-port" not in command:
        return command
    at = command.index("--metrics-port") + 1
    return [*command[:at], str(free_port()), *command[at + 1:]]


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_install_and_entrypoint_run_the_platform(settings: Settings,
                                                       tmp_path: Path) -> None:
    _, (build, runtime) = stages()
    src, venv, shim, app = tmp_path / "src", tmp_path / "opt/taskstream", tmp_path / "shim", \
        tmp_path / "app"
    copy_context(src)
    _shim_python(shim)
    _run_build_stage(build, src, venv, shim)
    # COPY --from=build /src/examples /app/examples
    shutil.copytree(src / "examples", app / "examples")
    assert not (venv / "lib/python3.11/site-packages/taskstream/__editable__").exists()

    # the runtime stage's environment, with $VENV here, and one platform's settings
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TASKSTREAM_", "VIRTUAL_ENV", "PYTHON"))}
    image_venv = build.env()["VENV"]
    env = {k: v.replace(image_venv, str(venv)) for k, v in runtime.env(env).items()}
    web_port = free_port()
    env.update(TASKSTREAM_BOOTSTRAP=settings.bootstrap,
               TASKSTREAM_TOPIC_PREFIX=settings.topic_prefix,
               TASKSTREAM_DATA_DIR=str(tmp_path / "data"),
               # tests bind the loopback only; the image's 0.0.0.0 is checked above
               TASKSTREAM_WEB_HOST="127.0.0.1", TASKSTREAM_WEB_PORT=str(web_port),
               TASKSTREAM_API_URL=f"http://127.0.0.1:{web_port}",
               TASKSTREAM_ADVERTISED_URL=f"http://127.0.0.1:{web_port}",
               TASKSTREAM_STANDBY_REPLICAS="0")
    assert runtime.env({"VENV": "/opt/taskstream", "PATH": ""})["TASKSTREAM_WEB_HOST"] == \
        "0.0.0.0"
    entrypoint = json.loads(runtime.all("ENTRYPOINT")[0])
    resolved = shutil.which(entrypoint[0], path=env["PATH"])
    assert resolved == str(venv / "bin/taskstream"), resolved

    def entry(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*entrypoint, *args], cwd=app, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    default = entry(*json.loads(runtime.all("CMD")[0]))
    assert default.returncode == 0 and "processor" in default.stdout and "worker" in default.stdout
    topics = entry(*_compose_command("topics"))
    assert topics.returncode == 0, topics.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for service in ("processor-0", "worker"):
            with open(logs / f"{service}.log", "wb") as log:
                command = _on_a_free_port(_compose_command(service))
                procs.append(subprocess.Popen([*entrypoint, *command], cwd=app, env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
        api = f"http://127.0.0.1:{web_port}"

        def ready() -> bool:
            for proc, name in zip(procs, ("processor-0", "worker"), strict=True):
                assert proc.poll() is None, (logs / f"{name}.log").read_text()[-3000:]
            try:
                return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the image's processor to be ready", ready, timeout=120, interval=0.5)
        submit = entry("submit", "examples.noop", "--payload", "{}")
        assert submit.returncode == 0, submit.stderr
        task_id = submit.stdout.split()[-1]
        waited = entry("wait", task_id, "--timeout", "120", "--json", timeout=150)
        assert waited.returncode == 0, waited.stderr + waited.stdout
        assert json.loads(waited.stdout)["status"] == "SUCCEEDED"
    finally:
        for proc in reversed(procs):
            proc.terminate()
        deadline = time.monotonic() + 40
        for proc in reversed(procs):
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
