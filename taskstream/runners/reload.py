"""``taskstream worker --reload``: restart the worker when its task modules change (D18).

The reloader is a supervisor process: it runs the worker as a child (``python -m
taskstream worker`` with the same options, less ``--reload``), watches the task
modules' source with watchfiles and, on a change, stops the child the way an
operator would and starts a new one. A fresh interpreter per generation imports
the new code whole; re-importing modules inside a running worker would leave old
functions behind in closures, pools and registries.

One reload, in order (why no task is lost or run twice by it):

1. watchfiles reports a changed ``.py`` file under the watched paths (debounced);
2. the supervisor sends SIGTERM to the child: the worker's graceful stop
   (:mod:`taskstream.workers.worker`) takes no new record, lets running attempts
   finish (up to ``--grace``) and emit their outcomes, flushes, commits the offset
   of every *started* record and leaves its consumer groups;
3. only once the child has exited does the supervisor start the next one; it
   joins the groups and reads from the committed offsets. Records fetched but not
   started were never committed, so they are read again (not lost); started ones
   lie before the commit, so they are not read again (not run twice).

An attempt still running when ``--grace`` ends is interrupted without an outcome;
its lease lapses and the processor retries it. That is the one way a reload runs a
handler twice: keep ``--grace`` above the longest task. A child that exits by itself
(say, the new code does not import) is reported, and the next change starts it again.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from watchfiles import Change, PythonFilter, watch

from taskstream.errors import TaskstreamError

log = logging.getLogger("taskstream.reload")

#: how often the supervisor looks at its child between file events
POLL_MS = 500
#: beyond the worker's grace: its flush, final commit and group leave (each bounded)
STOP_MARGIN_S = 30.0


class ReloadError(TaskstreamError):
    """The reloader cannot find what to watch."""


def watch_paths(target: str, extra: Iterable[Path] = (), cwd: Path | None = None) -> list[Path]:
    """The source the worker's ``-A module[:attr]`` comes from, plus ``extra``.

    A package is watched as its whole directory (a task module imports its
    siblings); a single-file module as that file. Found the way the worker's
    loader imports it (the current directory first), without importing it here.
    """
    top = target.partition(":")[0].split(".")[0]
    if not top:
        raise ReloadError(f"-A {target!r}: name a module, e.g. -A myproject.tasks")
    root = str((cwd or Path.cwd()).resolve())
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        spec = importlib.util.find_spec(top)
    finally:
        if added:
            sys.path.remove(root)
    paths: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        paths.extend(Path(p) for p in spec.submodule_search_locations)
    elif spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        paths.append(Path(spec.origin))
    else:
        raise ReloadError(f"-A {target!r}: no module {top!r} to watch (searched the current "
                          "directory and sys.path); check the spelling or pass --reload-dir")
    paths.extend(Path(p).resolve() for p in extra)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReloadError(f"cannot watch {', '.join(missing)}: no such file or directory")
    return sorted(set(paths))


def changed_files(changes: set[tuple[Change, str]]) -> list[str]:
    """The paths in a watchfiles change set, sorted, for the log line."""
    return sorted({path for _, path in changes})


@dataclass(frozen=True)
class ReloadOptions:
    argv: tuple[str, ...]  # the child's command line
    paths: tuple[Path, ...]  # what to watch
    grace_s: float  # the worker's --grace: how long a drain may take
    debounce_ms: int = 1600  # watchfiles' default: a save that writes twice is one change


class Reloader:
    """Runs ``options.argv`` and restarts it after every change under ``options.paths``."""

    def __init__(self, options: ReloadOptions) -> None:
        self.options = options
        self.child: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self._stop = threading.Event()
        self._signals = 0
        self._exit_reported = False

    def run(self) -> int:
        """Until SIGTERM/SIGINT: the exit code of the last child (0 if none ran)."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start()
            for changes in watch(*self.options.paths, watch_filter=PythonFilter(),
                                 debounce=self.options.debounce_ms, stop_event=self._stop,
                                 rust_timeout=POLL_MS, yield_on_timeout=True,
                                 raise_interrupt=False):
                if self._stop.is_set():
                    break
                if changes:
                    log.info("event=reload.changed files=%s", ",".join(changed_files(changes)))
                    self._stop_child()
                    if self._stop.is_set():
                        break
                    self._start()
                else:
                    self._notice_exit()
        finally:
            code = self._stop_child()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code or 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            # the first signal asks for the graceful stop, a second one for an immediate one
            child.send_signal(signal.SIGTERM)

    def _start(self) -> None:
        self.generation += 1
        log.info("event=reload.start generation=%d watching=%s", self.generation,
                 ",".join(str(p) for p in self.options.paths))
        # a session of its own: a Ctrl-C in the terminal reaches the supervisor only,
        # which forwards one SIGTERM (two would skip the child's grace period)
        self.child = subprocess.Popen(list(self.options.argv), start_new_session=True)
        self._exit_reported = False

    def _notice_exit(self) -> None:
        child = self.child
        if child is not None and child.poll() is not None and not self._exit_reported:
            log.warning("event=reload.child_exited generation=%d code=%d (waiting for a change "
                        "to start it again)", self.generation, child.returncode)
            self._exit_reported = True

    def _stop_child(self) -> int | None:
        """SIGTERM, wait for the drain (grace + margin), SIGKILL past that; the exit code."""
        child = self.child
        if child is None:
            return None
        if child.poll() is None:
            if self._signals == 0:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(self.options.grace_s + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                log.warning("event=reload.kill generation=%d (did not stop within %g s)",
                            self.generation, self.options.grace_s + STOP_MARGIN_S)
                child.kill()
                child.wait(10)
        log.info("event=reload.stopped generation=%d code=%d", self.generation, child.returncode)
        return child.returncode
