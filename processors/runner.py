"""Start a processor replica in this process (used by the CLI, tests and ``taskstream dev``)."""

from __future__ import annotations

import faust

from taskstream.admin import ensure_topics
from taskstream.processors.app import Processor
from taskstream.settings import Settings
from taskstream.statestore.api import register_api


def build_processor(settings: Settings) -> Processor:
    processor = Processor(settings)
    register_api(processor)
    return processor


def run_processor(settings: Settings, loglevel: str = "info") -> None:
    """Create missing topics, then run the Faust worker until a signal stops it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings)
    processor = build_processor(settings)
    worker = faust.Worker(processor.app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
