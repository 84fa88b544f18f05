"""Progress bars of ``taskstream replay`` on stderr (rich), for a terminal only.

Replay itself only counts (:data:`taskstream.processors.replay.read.ProgressFactory`);
the bar is the CLI's: :func:`progress_for` gives replay a bar when stderr is a
terminal and ``--quiet`` was not given, else the silent default.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from taskstream.processors.replay.read import ProgressFactory, no_progress


class Progress:
    """A progress bar with events per second on stderr (a replay :data:`ProgressFactory`)."""

    def __init__(self, description: str, total: int) -> None:
        self._bar: Any = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(description, total=total, rate="")
        self._started = time.monotonic()
        self._done = 0
        self._bar.start()

    def advance(self, n: int) -> None:
        if self._bar is None:
            return
        self._done += n
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self._bar.update(self._task, advance=n, rate=f"{self._done / elapsed:,.0f} ev/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress_for(quiet: bool) -> ProgressFactory:
    """A bar per read, unless ``quiet`` or stderr is not a terminal."""
    return no_progress if quiet or not sys.stderr.isatty() else Progress
