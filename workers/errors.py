"""Errors of the worker runtime, and the exceptions a task handler raises on purpose.

Two families live here:

* what the *runtime* raises to its caller (:class:`WorkerError` and subclasses):
  a task module that cannot be loaded, a bad registration;
* what a *handler* raises to say how its attempt ended: :class:`Retry` (try
  again, optionally after a delay) and :class:`NonRetryableError` (do not try
  again). Any other exception is a retryable failure.
"""

from __future__ import annotations

from typing import NoReturn

from taskstream.errors import TaskstreamError


class WorkerError(TaskstreamError):
    """Root of the errors raised by ``taskstream.workers``."""


class TaskLoadError(WorkerError):
    """``-A module[:attr]`` does not name an importable task registry."""


class RegistrationError(WorkerError):
    """A task could not be registered (duplicate name, bad queue name, bad signature)."""


class WorkerThreadDied(WorkerError):
    """A thread the worker cannot run without (a queue's consumer, the producer's delivery
    thread, the control reader) or its dispatcher ended unexpectedly. The worker stopped
    as on SIGTERM (running attempts got their grace) and the CLI exits with
    :attr:`exit_code`: let the supervisor (systemd, Kubernetes, compose ``restart:``)
    start it again (D47). The log line ``event=worker.thread_died`` says which and why."""

    retriable = True
    #: EX_SOFTWARE (sysexits.h): an internal error, not a usage or config error
    exit_code = 70


class Retry(TaskstreamError):
    """Raise from a handler to end this attempt as a retryable failure.

    ``after`` (seconds) asks the processor to wait at least that long before the
    next attempt instead of its backoff; ``None`` keeps the backoff.
    """

    retriable = True

    def __init__(self, message: str = "retry requested", *, after: float | None = None) -> None:
        if after is not None and after < 0:
            raise ValueError(f"Retry(after=...) must be >= 0 seconds; got {after!r}")
        super().__init__(message)
        self.after = after

    @property
    def retry_after_ms(self) -> int | None:
        return None if self.after is None else int(self.after * 1000)


class NonRetryableError(TaskstreamError):
    """Raise (or subclass) from a handler when retrying cannot help: the task goes DEAD."""

    retriable = False


def fail(message: str) -> NoReturn:
    """End the attempt as a non-retryable failure with ``message``."""
    raise NonRetryableError(message)
