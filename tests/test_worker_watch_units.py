"""Broker-free checks of the worker's parts that must not die quietly (D47)."""

from __future__ import annotations

import threading
from pathlib import Path

from taskstream.settings import load_settings
from taskstream.workers.emitter import EventEmitter
from taskstream.workers.metrics import WorkerMetrics
from tests.harness import wait_for
from tests.test_worker_support import ready_envelope


def test_a_delivery_callback_that_raises_does_not_end_the_delivery_thread(
        tmp_path: Path) -> None:
    """No broker answers, so each delivery fails after ``delivery_timeout_s``; the first
    callback raises. The delivery thread goes on and serves the next report."""
    settings = load_settings(bootstrap="127.0.0.1:1", delivery_timeout_s=0.5,
                             data_dir=tmp_path)
    emitter = EventEmitter(settings, "w-test", WorkerMetrics())
    served = threading.Event()

    def boom(ok: bool) -> None:
        raise RuntimeError("a callback's own bug")

    try:
        emitter.started(ready_envelope("examples.noop"), on_delivered=boom)
        wait_for("the failed delivery", lambda: emitter._metrics.registry.get_sample_value(
            "taskstream_worker_delivery_errors_total", {"type": "TaskStarted"}), timeout=30)
        emitter.started(ready_envelope("examples.noop"), on_delivered=lambda ok: served.set())
        assert served.wait(30), "the second delivery report was never served"
        assert not emitter.died
    finally:
        emitter.close(0.1)
