"""Start a processor replica in this process (used by the CLI, tests and ``taskstream dev``)."""

from __future__ import annotations

import faust

from taskstream.admin import TopicSpec, choose_session_timeout, create_topics, ensure_topics
from taskstream.api.service import register_api
from taskstream.processors.live.app import Processor
from taskstream.queue_registry import register_queues
from taskstream.settings import Settings
from taskstream.statestore.tables import TABLE_NAMES
from taskstream.topics import changelog_topic


def build_processor(settings: Settings) -> Processor:
    processor = Processor(settings)
    register_api(processor)
    return processor


def ensure_changelog_topics(settings: Settings) -> dict[str, bool]:
    """Create the tables' changelog topics before Faust starts.

    Faust would create them itself, but racing its own metadata refresh it can
    start the fold before a new changelog topic is visible ("PartitionsMismatch
    ... changelog has 0 partitions"). Made here, they exist with the events
    topic's partition count and our replication settings before the first event.
    """
    config = {"cleanup.policy": "compact",
              "min.insync.replicas": str(max(1, min(2, settings.replication - 1)))}
    return create_topics(settings, [
        TopicSpec(changelog_topic(settings, name), settings.partitions, config)
        for name in TABLE_NAMES])


def run_processor(settings: Settings, loglevel: str = "info") -> None:
    """Create missing topics, then run the Faust worker until a signal stops it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_topics(settings)
    register_queues(settings, settings.queues)  # the fold sends to these without asking
    ensure_changelog_topics(settings)
    settings = settings.model_copy(
        update={"session_timeout_s": choose_session_timeout(settings)})
    processor = build_processor(settings)
    # the fold's service stops first (services stop in reverse), before Faust leaves its group
    worker = faust.Worker(processor.app, processor.service(), loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
