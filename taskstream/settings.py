"""Settings: one object, read from ``TASKSTREAM_*`` variables and an optional file.

Precedence, highest first: explicit keyword arguments, environment variables
(``TASKSTREAM_BOOTSTRAP``, ``TASKSTREAM_TOPIC_PREFIX``, ...), the TOML or JSON file
named by ``TASKSTREAM_CONFIG`` (or passed as ``config_file``), then defaults.
A bad value fails at start-up with a :class:`~taskstream.errors.ConfigError`
that names the field.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskstream.errors import ConfigError

_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]*$")
_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?$")
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class Settings(BaseSettings):
    """Everything a taskstream process can be told. Immutable once built."""

    model_config = SettingsConfigDict(
        env_prefix="TASKSTREAM_", frozen=True, extra="forbid", populate_by_name=True
    )

    # Kafka
    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    topic_prefix: str = Field("taskstream.", description="prefix of every topic name")
    partitions: int = Field(6, ge=1, le=10_000, description="partitions of the events topic")
    ready_partitions: int = Field(3, ge=1, le=10_000, description="partitions of each ready topic")
    replication: int = Field(1, ge=1, le=16, description="replication factor of new topics")
    events_retention_ms: int = Field(-1, ge=-1, description="events topic retention, -1 = forever")
    ready_retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=60_000)
    dlq_retention_ms: int = Field(-1, ge=-1)
    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    priority_levels: int = Field(3, ge=1, le=10, description="priority levels 0..N-1, higher first")
    kafka_timeout_s: float = Field(10.0, gt=0, description="bound on any wait for the broker")

    # Kafka security (D25): every client of every part takes these
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = Field(
        None, description="PEM CA the brokers' certificates are checked against "
        "(unset: the system's CAs)")
    ssl_cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_key_file: Path | None = Field(None, description="PEM key of ssl_cert_file")
    ssl_key_password: SecretStr | None = None

    # Signed worker and processor events (D26) and payload encryption (D27): keyrings are
    # JSON ({"current": kid, "keys": {...}}) given inline (a secret) or as a file
    signing_keys: SecretStr | None = Field(
        None, description="keyring of event signing keys (JSON); with one, the fold refuses "
        "unsigned worker and processor events")
    signing_keyring_file: Path | None = None
    payload_keys: SecretStr | None = Field(
        None, description="keyring of payload encryption keys (JSON); its current key "
        "seals payloads, results and error messages, every key opens them")
    payload_keyring_file: Path | None = None

    # Bounds on what a task may carry, checked by the SDK, the API and the fold (D28)
    max_event_bytes: int = Field(
        1_000_000, ge=4096, description="the one size budget: the largest encoded event any "
        "part writes; must fit the events topic's max.message.bytes")
    max_headers: int = Field(64, ge=0, le=10_000, description="headers per task")
    max_header_bytes: int = Field(4096, ge=1, description="bytes of one header name + value")
    max_tags: int = Field(64, ge=0, le=10_000, description="tags per task")
    max_tag_bytes: int = Field(256, ge=1, description="bytes of one tag")

    # Producer
    linger_ms: int = Field(
        1, ge=0, le=60_000,
        description="how long the SDK's producer waits to fill a request; a submit waits "
        "this long before it is sent (D52)")
    worker_linger_ms: float = Field(
        5.0, ge=0, le=1_000,
        description="how long a worker's emitter waits to fill a request (its TaskStarted "
        "and outcome events): a task's start and end times are taken before, so it delays "
        "when the processor learns of them (a result readable, a dependent dispatched), "
        "not the times recorded (D53)")
    compression: str = Field("lz4")
    max_payload_bytes: int = Field(
        900 * 1024, ge=1, description="encoded payload; below max_event_bytes (the rest of an "
        "event: fields, headers, tags, depends_on)")
    producer_queue_max: int = Field(200_000, ge=1)
    delivery_timeout_s: float = Field(30.0, gt=0)
    schema_registry_url: str | None = None

    # Processor
    data_dir: Path = Field(Path(".taskstream/data"))
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    advertised_url: str | None = Field(
        None, description="the address other replicas use to reach this one's API "
        "(http://host:port); unset: http://<web_host>:<web_port>, or this machine's hostname "
        "when web_host is a wildcard (0.0.0.0, ::). In a StatefulSet: the pod's DNS name",
    )
    processor_id: str = "taskstream-processor"
    standby_replicas: int = Field(1, ge=0, le=5)
    session_timeout_s: float | None = Field(
        None, ge=1.0, le=300.0,
        description="how long a silent processor replica keeps its partitions (failover time); "
        "unset: the shortest the brokers accept (group.min.session.timeout.ms, 6 s on a stock "
        "broker, 1 s on `taskstream kafka up`'s), but at least 3 s",
    )
    timer_interval_s: float = Field(0.1, gt=0, le=60)
    fold_stall_s: float = Field(
        60.0, ge=1.0, le=3600.0,
        description="how long a processor replica's fold may make no progress while it has "
        "lag before its watchdog restarts the fold (and how long its event loop may not "
        "answer before the replica exits non-zero for its supervisor to restart it); D43")
    fold_batch_max: int = Field(
        1_000, ge=1, le=100_000,
        description="most events-topic records the processor folds in one batch")
    fold_round_ms: float = Field(
        3.0, ge=0, le=1_000,
        description="the least time between the starts of two batches of the processor's "
        "fold: under load, what arrives meanwhile joins the next batch; an idle fold takes "
        "a record at once; 0: no wait (D51)")
    changelog_window_ms: float = Field(
        50.0, ge=0, le=10_000,
        description="how long the processor gathers its batches' changelog records (the "
        "latest state of each entity touched) before it sends them and commits the events "
        "offsets past those batches; dispatches go out every batch. 0: every batch (D50)")
    processor_linger_ms: float = Field(
        1.0, ge=0, le=1_000,
        description="how long the processor's producer waits to fill a request")
    max_result_bytes: int = Field(256 * 1024, ge=0)
    clock_tolerance_ms: int = Field(
        5_000, ge=0, le=3_600_000,
        description="how far an event's own time may stray from its record's broker "
        "timestamp before the fold clamps it (D44); replay must use the same value")
    default_lease_s: float = Field(30.0, gt=0)
    # Dependencies (issue 15, D37)
    max_dependencies: int = Field(
        1000, ge=1, le=100_000,
        description="the most parents one task may list in depends_on, and the most "
        "dependents one task or group keeps (the input bounds use it too); a larger fan-in "
        "goes through a group")
    dependency_timeout_s: float = Field(
        300.0, gt=0, le=10 * 365 * 24 * 3600,
        description="how long a task waits for a parent nobody has heard of before it fails "
        "(stamped into each submission, so replay needs no setting)")

    # API
    api_url: str = "http://127.0.0.1:6066"
    api_tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) the API serves HTTPS with")
    api_tls_key: Path | None = Field(None, description="PEM key of api_tls_cert")
    api_ca_file: Path | None = Field(
        None, description="PEM CA that clients and peer replicas check the API's certificate "
        "against (unset: the system's CAs)")
    api_token: SecretStr | None = None
    api_tokens: dict[str, list[str]] = Field(
        default_factory=dict, description="sha256 hex of a token -> scopes (read, submit, admin)"
    )
    api_rate_limit: float | None = Field(
        None, gt=0, le=1_000_000,
        description="requests per second each caller (bearer token, else address) may send "
        "to one API replica; over it: 429 with Retry-After. Unset: no limit",
    )
    api_rate_burst: int = Field(20, ge=1, le=1_000_000,
                                description="requests a caller may send at once above the rate")
    # the query API under load and lag (issue 21, D46)
    api_list_scan_max: int = Field(
        10_000, ge=1, le=10_000_000,
        description="rows one listing request may examine on one replica; a page that "
        "reaches it ends early with scan_limit_reached and a cursor to go on from")
    api_max_waiters: int = Field(
        1000, ge=1, le=1_000_000,
        description="concurrent GET /tasks/{id}/wait requests one replica holds; over it: "
        "503 too_many_waiters with Retry-After")
    api_read_wait_s: float = Field(
        5.0, ge=0, le=300,
        description="longest a task lookup waits for the owning replica's fold to pass a "
        "record (?after=<partition>:<offset>) or to reach the end before it answers 404")

    # Object storage for large payloads and results, retention (issue 22; D34, D35)
    storage_bucket: str | None = Field(
        None, description="S3 bucket for payloads and results over offload_threshold_bytes; "
        "unset = no offload (a payload over max_payload_bytes is refused)")
    storage_endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL (S3Proxy, MinIO, ...); unset = AWS")
    storage_region: str = "us-east-1"
    storage_access_key: SecretStr | None = None
    storage_secret_key: SecretStr | None = None
    storage_kms_key_id: str | None = Field(
        None, description="encrypt objects with this KMS key (SSE-KMS); its ID goes in the "
        "reference")
    storage_timeout_s: float = Field(10.0, gt=0, description="bound on one object store call")
    offload_threshold_bytes: int = Field(256 * 1024, ge=0)
    max_offload_bytes: int = Field(5 * 1024**3, ge=1, description="largest offloaded value")
    result_cache_bytes: int = Field(64 * 1024**2, ge=0, description="API result cache size")
    result_cache_item_bytes: int = Field(8 * 1024**2, ge=0,
                                         description="largest result the API caches")
    retention_s: float | None = Field(
        None, ge=0, description="finished tasks leave the state this long after they finish; "
        "unset = kept for ever")
    retention_by_queue: dict[str, float | None] = Field(
        default_factory=dict, description="queue -> retention_s for that queue (null = for ever)")
    reaper_grace_s: float = Field(
        3600.0, ge=0, description="the reaper leaves objects younger than this alone")
    s3proxy_version: str = "3.0.0"
    s3proxy_home: Path = Field(
        Path(os.path.expanduser("~/.cache/taskstream/s3proxy")),
        description="cache of the resolved S3Proxy jars (the local S3 server of tests and dev)")
    # Observability (docs/observability.md, D22-D24)
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector base URL (http://host:4318); unset: no tracing, "
        "and tracing costs one attribute check per task",
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="fraction of tasks traced (decided from the task ID, "
        "so every process agrees)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object a line, with task_id, attempt, queue, trace_id",
    )
    worker_heartbeat_s: float = Field(
        5.0, ge=0.1, le=300.0, description="how often a worker announces itself on the workers "
        "topic; it is lost after 3 missed heartbeats",
    )

    # Local Kafka runner
    kafka_version: str = "4.3.1"
    kafka_home: Path = Field(
        Path(os.path.expanduser("~/.cache/taskstream/kafka")),
        description="cache of resolved Kafka jars and local broker state",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_legal(cls, v: str) -> str:
        if not _TOPIC_PREFIX.match(v):
            raise ValueError("only letters, digits, '.', '_' and '-' are allowed in topic names")
        return v

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, v: str) -> str:
        for server in v.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return v

    @model_validator(mode="after")
    def _security_is_complete(self) -> Self:
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username "
                             "and sasl_password (TASKSTREAM_SASL_USERNAME, "
                             "TASKSTREAM_SASL_PASSWORD)")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together (mutual TLS)")
        if (self.api_tls_cert is None) != (self.api_tls_key is None):
            raise ValueError("api_tls_cert and api_tls_key go together (the API over HTTPS)")
        if self.signing_keys is not None and self.signing_keyring_file is not None:
            raise ValueError("give signing_keys or signing_keyring_file, not both")
        if self.payload_keys is not None and self.payload_keyring_file is not None:
            raise ValueError("give payload_keys or payload_keyring_file, not both")
        if self.max_payload_bytes >= self.max_event_bytes:
            raise ValueError(f"max_payload_bytes ({self.max_payload_bytes}) must be below "
                             f"max_event_bytes ({self.max_event_bytes}), the size budget of "
                             "a whole event")
        return self

    @property
    def api_scheme(self) -> str:
        """``https`` when the API serves TLS, else ``http``."""
        return "https" if self.api_tls_cert is not None else "http"
    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint_is_a_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an http(s) URL of an OTLP/HTTP collector "
                             "(http://host:4318)")
        return v.rstrip("/")

    @field_validator("advertised_url")
    @classmethod
    def _advertised_url_is_an_origin(cls, v: str | None) -> str | None:
        if v is None:
            return v
        match = _ORIGIN.match(v)
        if match is None:
            raise ValueError(f"{v!r} is not http(s)://host:port (no path): the address peers "
                             "use to reach this replica's API")
        return v.rstrip("/")

    def topic(self, name: str) -> str:
        """The full name of one of the platform's topics."""
        return f"{self.topic_prefix}{name}"


def advertised_url(settings: Settings) -> str:
    """The URL peers use to reach this replica's API (routing by partition owner, D17).

    A wildcard bind address (0.0.0.0 in a container) is no address a peer can use,
    so without ``advertised_url`` the machine's hostname stands in for it.
    """
    if settings.advertised_url:
        return settings.advertised_url
    host = settings.web_host
    if host in _WILDCARD_HOSTS:
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{settings.api_scheme}://{host}:{settings.web_port}"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"settings file {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a table of settings")
    return data


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings, or raise ConfigError naming every bad field."""
    config_file = config_file or os.environ.get("TASKSTREAM_CONFIG")
    from_file = _read_file(Path(config_file)) if config_file else {}
    env_keys = {
        k[len("TASKSTREAM_") :].lower() for k in os.environ if k.startswith("TASKSTREAM_")
    }
    # environment beats the file: drop file keys the environment sets
    merged = {k: v for k, v in from_file.items() if k not in env_keys}
    merged.update(overrides)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def mask_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` in it masked."""
    if "@" not in text or "://" not in text:
        return text
    parts = []
    for item in text.split(","):  # bootstrap lists and the like
        try:
            url = urlsplit(item.strip())
        except ValueError:
            parts.append(item)
            continue
        if url.password is None and url.username is None:
            parts.append(item)
            continue
        host = url.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{url.port}" if url.port is not None else ""
        user = url.username or ""
        userinfo = f"{user}:***" if url.password is not None else "***"
        parts.append(urlunsplit((url.scheme, f"{userinfo}@{host}{port}", url.path, url.query,
                                 url.fragment)))
    return ",".join(parts)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data: secrets replaced by ``***``, and passwords in
    URLs (``https://user:pw@host``) masked too."""
    data = settings.model_dump(mode="json")
    for key, value in data.items():
        if isinstance(getattr(settings, key), SecretStr) and value is not None:
            data[key] = "***"
        elif isinstance(value, str):
            data[key] = mask_url(value)
    if data.get("api_tokens"):
        # token hashes are shown by a short prefix only: enough to tell them apart
        data["api_tokens"] = {
            f"{digest[:8]}***": scopes for digest, scopes in data["api_tokens"].items()}
    return data
