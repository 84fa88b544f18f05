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
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskstream.errors import ConfigError

_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]*$")
_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?$")
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


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

    # Producer
    linger_ms: int = Field(5, ge=0, le=60_000)
    compression: str = Field("lz4")
    max_payload_bytes: int = Field(1024 * 1024, ge=1)
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
    fold_batch_max: int = Field(
        1_000, ge=1, le=100_000,
        description="most events-topic records the processor folds in one batch")
    processor_linger_ms: float = Field(
        1.0, ge=0, le=1_000,
        description="how long the processor's producer waits to fill a request")
    max_result_bytes: int = Field(256 * 1024, ge=0)
    default_lease_s: float = Field(30.0, gt=0)

    # API
    api_url: str = "http://127.0.0.1:6066"
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
    return f"http://{host}:{settings.web_port}"


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


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data with secrets replaced by ``***``."""
    data = settings.model_dump(mode="json")
    for key, value in data.items():
        if isinstance(getattr(settings, key), SecretStr) and value is not None:
            data[key] = "***"
    if data.get("api_tokens"):
        # token hashes are shown by a short prefix only: enough to tell them apart
        data["api_tokens"] = {
            f"{digest[:8]}***": scopes for digest, scopes in data["api_tokens"].items()}
    return data
