"""Start a processor replica in this process (used by the CLI, tests and ``taskstream dev``).

Security (D25, D29) reaches Faust here: its Kafka clients (aiokafka) get the
settings' SASL credentials and TLS context, its web server the API's
certificate (:func:`secure_faust_app`). The confluent-kafka clients of the
replica take the same settings from ``taskstream.kafka_config``.
"""

from __future__ import annotations

from collections.abc import Iterable

import faust
from mode import ServiceT

from taskstream.admin import TopicSpec, choose_session_timeout, create_topics
from taskstream.api.service import register_api
from taskstream.kafka_config import sasl_credentials, ssl_context
from taskstream.processors.live.app import Processor
from taskstream.queue_registry import set_up_platform
from taskstream.security.tls import server_context
from taskstream.settings import Settings, advertised_url
from taskstream.statestore.tables import TABLE_NAMES
from taskstream.telemetry.logs import configure_logging, dict_config
from taskstream.telemetry.tracing import OFF, Telemetry
from taskstream.topics import changelog_topic, fold_group


def faust_broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The settings' Kafka security as Faust credentials (None for PLAINTEXT)."""
    sasl = sasl_credentials(settings)
    if sasl is not None:
        return faust.SASLCredentials(username=sasl.username, password=sasl.password,
                                     ssl_context=sasl.ssl_context, mechanism=sasl.mechanism)
    context = ssl_context(settings)
    return faust.SSLCredentials(context) if context is not None else None


def secure_faust_app(app: faust.App, settings: Settings) -> None:
    """Give the Faust app the settings' Kafka credentials and the API's TLS certificate.

    Set on the app's configuration before it starts (its clients and web server read
    them then); ``build_faust_app`` may take them as ``broker_credentials=`` and
    ``web_ssl_context=`` instead.
    """
    credentials = faust_broker_credentials(settings)
    if credentials is not None:
        app.conf.broker_credentials = credentials
    web = server_context(settings)
    if web is not None:
        app.conf.web_ssl_context = web


def build_processor(settings: Settings, telemetry: Telemetry = OFF) -> Processor:
    processor = Processor(settings, telemetry=telemetry)
    secure_faust_app(processor.app, settings)
    # lag and health read the fold's own group on the events topic (D19)
    register_api(processor, telemetry, events_group=fold_group(settings))
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


class ProcessorWorker(faust.Worker):
    """Faust's worker with the app started first and stopped last.

    ``faust.Worker`` makes its services the app's elders: they start before it and stop
    after it, and the app's stop closes the tables' RocksDB stores first thing. The
    fold's service must stop while they are open: its last window is written, sent and
    committed then (D50), or the next start folds it again and redoes its dispatches
    (D4)."""

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        dependencies = list(super().on_init_dependencies())
        return [self.app, *(d for d in dependencies if d is not self.app)]


def run_processor(settings: Settings, loglevel: str = "info") -> None:
    """Create missing topics, then run the Faust worker until a signal stops it."""
    # the set-up's own lines (Kafka clients included) take the process's log format too
    configure_logging(loglevel, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    set_up_platform(settings)  # the settings' queues registered: the fold sends to them
    ensure_changelog_topics(settings)
    settings = settings.model_copy(
        update={"session_timeout_s": choose_session_timeout(settings)})
    telemetry = Telemetry.from_settings(settings, "taskstream-processor",
                                        advertised_url(settings))
    processor = build_processor(settings, telemetry)
    # the fold's service stops first, before Faust leaves its group and closes the tables;
    # taskstream's log format (text or JSON lines, telemetry/logs.py) instead of Faust's own
    worker = ProcessorWorker(processor.app, processor.service(), loglevel=loglevel, quiet=True,
                             logging_config=dict_config(loglevel, settings.log_format))
    try:
        worker.execute_from_commandline()
    finally:
        telemetry.shutdown()
