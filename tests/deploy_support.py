"""Helpers for the deployment tests: read the Dockerfile and .dockerignore the way
Docker does (for what these files use), find kustomize, load the pinned schemas.

No Docker engine or cluster runs here (docs/deploy.md says what that leaves out).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "schemas"


# -- Dockerfile ----------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest)

    def all(self, instruction: str) -> list[str]:
        return [rest for ins, rest in self.steps if ins == instruction]

    def env(self, outer: dict[str, str] | None = None) -> dict[str, str]:
        """The stage's ENV, in order, each value expanded against what came before."""
        env = dict(outer or {})
        for rest in self.all("ENV"):
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = expand(value, env)
        return env


def expand(value: str, env: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` from ``env`` (Docker's substitution, without modifiers)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (with defaults) and the stages, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(expand(parts[0], args), name))
        elif not stages and instruction == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1].steps.append((instruction, rest))
    return args, stages


# -- .dockerignore -------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """Docker's rules: patterns in order, the last one that matches a path or any of its
    parents decides; ``!`` re-includes."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((exception, pattern, _pattern_regex(pattern)))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for exception, _, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not exception
        return result

    def may_reinclude_under(self, rel_dir: str) -> bool:
        return any(exc and (p.startswith(rel_dir + "/") or p.startswith("**"))
                   for exc, p, _ in self.rules)


def build_context(root: Path = ROOT) -> Iterator[str]:
    """The relative paths Docker would send as the build context."""
    ignore = DockerIgnore((root / ".dockerignore").read_text())
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if not ignore.excluded(rel) or ignore.may_reinclude_under(rel):
                kept.append(d)
        dirnames[:] = kept
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not ignore.excluded(rel):
                yield rel


def copy_context(dest: Path, root: Path = ROOT) -> list[str]:
    files = list(build_context(root))
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return files


# -- kustomize and schemas ------------------------------------------------------------


def kustomize_command() -> list[str]:
    """``kustomize`` as the Makefile installs it (.ci-build/bin), else on PATH, else
    ``kubectl kustomize``. Missing: the test fails saying how to get it."""
    for candidate in (os.environ.get("TASKSTREAM_KUSTOMIZE"), ROOT / ".ci-build/bin/kustomize",
                      shutil.which("kustomize")):
        if candidate and Path(candidate).is_file():
            return [str(candidate), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    pytest.fail("kustomize is not installed: run `make kustomize` (installs the pinned version "
                "into .ci-build/bin with the Go toolchain)")


def render(overlay: Path) -> list[dict[str, Any]]:
    """``kustomize build`` of ``overlay``: the manifests as a cluster would receive them."""
    out = subprocess.run([*kustomize_command(), str(overlay)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, f"kustomize build {overlay} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def load_schema(name: str) -> dict[str, Any]:
    path = SCHEMAS / name
    if path.suffix == ".json":
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded
