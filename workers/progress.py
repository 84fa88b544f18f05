"""What a worker adds to an attempt for flow control (issue 16): progress, expiry, fencing.

A handler's progress reports are throttled so they do not flood the log.

``ctx.progress(fraction, note)`` may be called in a tight loop; every report sent is
a ``TaskProgress`` event in the events topic, folded into the task's state. So at
most one report per ``interval_s`` per attempt leaves the worker: the first one, then
the first one after each interval. A report of 1.0 (done) always leaves, so the last
state a reader sees is not stuck below it. Reports in between are dropped, not
queued: progress is a gauge, only the newest value matters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from taskstream.schemas.events import TaskDispatched
from taskstream.workers.context import FencingToken, check_progress

#: the shortest time between two progress events of one attempt (seconds)
PROGRESS_INTERVAL_S = 1.0


class ProgressThrottle:
    """Passes a report to ``send`` at most once per ``interval_s`` (and always 1.0).

    Thread-safe: a handler in a thread pool and the event loop may both report.
    """

    __slots__ = ("_clock", "_last", "_lock", "_send", "dropped", "interval_s", "sent")

    def __init__(self, send: Callable[[float, str], None],
                 interval_s: float = PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()
        self.interval_s = interval_s
        self.sent = 0
        self.dropped = 0

    def report(self, fraction: float, note: str = "") -> bool:
        """Send or drop one report; True if it was sent."""
        value, text = check_progress(fraction, note)
        now = self._clock()
        with self._lock:
            due = self._last is None or now - self._last >= self.interval_s or value >= 1.0
            if not due:
                self.dropped += 1
                return False
            self._last = now
            self.sent += 1
        self._send(value, text)
        return True


def expired(dispatched: TaskDispatched, now_ms: int | None = None) -> bool:
    """Whether a dispatch must not start: its task's expiry has come (worker clock)."""
    expires = dispatched.expires_at_ms
    return expires is not None and (time.time_ns() // 1_000_000 if now_ms is None
                                    else now_ms) >= expires


def fencing_token(attempt: int, dispatched: TaskDispatched) -> FencingToken:
    """The attempt's fencing token from its dispatch record."""
    return FencingToken(dispatched.fencing_token or 0, attempt, dispatched.dispatch_id,
                        dispatched.concurrency_key)
