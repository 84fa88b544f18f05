"""What both producer flavours share: settings, the Kafka core and the event builder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskstream.objectstore.offload import Offloader
from taskstream.producer.build import EventBuilder
from taskstream.producer.config import default_source
from taskstream.producer.core import ProducerCore
from taskstream.producer.errors import ProducerQueueFullError
from taskstream.producer.metrics import ProducerMetrics
from taskstream.producer.tracing import SubmitTracing
from taskstream.queue_registry import KnownQueues
from taskstream.schemas.models import DEFAULT_QUEUE, SpecLimits, TaskSpec
from taskstream.security.sealing import Sealer
from taskstream.settings import Settings, load_settings
from taskstream.telemetry.tracing import Telemetry
from taskstream.topics import events_topic, registry_reader_group

if TYPE_CHECKING:
    from taskstream.producer.handle import BatchDelivery, _Delivery


class ProducerBase:
    """Builds the parts; :class:`TaskProducer` and :class:`AsyncTaskProducer` drive them.

    ``settings`` defaults to :func:`load_settings` (environment and file).
    ``source`` names this producer in every event (default
    ``producer:<host>:<pid>``). ``queue_full_timeout_s`` bounds how long a
    submit waits for room in a full local queue and ``connect_timeout_s`` how
    long it waits for an unreachable broker (both default to
    ``settings.kafka_timeout_s``). ``kafka_config`` adds librdkafka settings
    (not acks, idempotence or partitioner). ``telemetry`` is where the submit spans go
    (default: the settings' ``otlp_endpoint``, a pipeline this producer owns and shuts
    down on close; none: tracing off).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        source: str | None = None,
        metrics: ProducerMetrics | None = None,
        queue_full_timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._owns_telemetry = telemetry is None
        if telemetry is None:
            telemetry = Telemetry.from_settings(self.settings, "taskstream-producer",
                                                source or default_source())
        self._tracing = SubmitTracing(telemetry, events_topic(self.settings))
        self._core = ProducerCore(
            self.settings,
            metrics=metrics,
            queue_full_timeout_s=queue_full_timeout_s,
            connect_timeout_s=connect_timeout_s,
            kafka_overrides=kafka_config,
            tracing=self._tracing,
        )
        self.sealer: Sealer | None = self._core.sealer
        self._build = EventBuilder(
            source or default_source(),
            self.settings.max_payload_bytes,
            limits=SpecLimits.from_settings(self.settings),
            offloader=Offloader.from_settings(self.settings),
            sealer=self.sealer,
            max_event_bytes=self.settings.max_event_bytes,
        )
        #: the queue registry as this producer last read it: a submission to a queue it
        #: does not hold reads it again, then is refused (UnknownQueueError, D31)
        self.known_queues = KnownQueues(self.settings, registry_reader_group)
        self._submitted = self._core.metrics.submitted.labels(event="TaskSubmitted")
        self._init_flavour()

    def _queue_stayed_full(
        self, handles: Sequence[_Delivery], batch: BatchDelivery, unsent: list[int]
    ) -> ProducerQueueFullError:
        """submit_many's error when the local queue stayed full: its ``handles`` are
        those of the events that were queued (and counted as submitted); the
        ``unsent`` ones leave the batch and never turn delivered."""
        skip = set(unsent)
        exc = self._core.queue_full_error()
        exc.handles = [h for i, h in enumerate(handles) if i not in skip]
        batch.drop(unsent)
        self._submitted.inc(len(exc.handles))
        return exc

    def _unknown_queues(self, queues: Iterable[str]) -> bool:
        """True when a queue is not in the cached registry (the caller then requires them:
        a read of the registry, blocking)."""
        known = self.known_queues
        return any(queue not in known for queue in queues)

    def _init_flavour(self) -> None:
        """The flavour's own state (poll counters, a poll thread); nothing by default."""

    def _traced(self, task_id: str, name: str, options: Mapping[str, Any], start_ns: int
                ) -> None:
        """The submit span of one task (tracing on only)."""
        queue = options.get("queue")
        self._tracing.submitted(task_id, name, start_ns,
                                queue=queue if isinstance(queue, str) else None,
                                depends_on=options.get("depends_on") or ())

    def _close_telemetry(self) -> None:
        if self._owns_telemetry:
            self._tracing.telemetry.shutdown()

    @property
    def source(self) -> str:
        return self._build.source

    @property
    def telemetry(self) -> Telemetry:
        """Where this producer's submit spans go (tracing.OFF when it does not trace)."""
        return self._tracing.telemetry

    @property
    def metrics(self) -> ProducerMetrics:
        return self._core.metrics

    @property
    def topic(self) -> str:
        return self._core.topic



def queue_of(options: Mapping[str, Any]) -> str:
    """The queue of a submit() call's options (validated by then)."""
    return str(options.get("queue", DEFAULT_QUEUE))


def queues_of(items: Sequence[TaskSpec | Mapping[str, Any]]) -> set[str]:
    """The queues of submit_many()'s items (validated by then)."""
    return {item.queue if isinstance(item, TaskSpec) else str(item.get("queue", DEFAULT_QUEUE))
            for item in items}
