"""The chaos harness's errors (D42)."""

from taskstream.errors import TaskstreamError


class ChaosError(TaskstreamError):
    """A chaos run could not be set up or carried out (not an invariant that failed:
    those are the report's findings)."""
