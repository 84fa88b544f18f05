"""The confluent-kafka client configurations of every part, built in one place.

Durability is not negotiable for a producer: idempotence on, ``acks=all``, so a
broker ack means the record is on every in-sync replica and a client retry never
writes it twice; ``partitioner=murmur2_random`` puts a key on the same partition
as the Java client, aiokafka and Faust do (DESIGN.md, "Topics"). Those keys are
fixed here; each role (the SDK's task producer, the worker's emitter, queue
commands) passes only its own tuning (linger, compression, timeouts), and a
caller may never override the fixed keys.

Consumers never auto-commit: a part that commits does so itself, after the
work is done (workers), or never (replay, the API's reads).

Security (D25) is added here once, for every client: :func:`security_config`
(librdkafka's ``security.protocol``, SASL and TLS keys) goes into every
producer, consumer and admin config this module builds, and
:func:`ssl_context` / :func:`sasl_credentials` give the same settings to the
asyncio clients (aiokafka under Faust). A file named by a setting must exist,
or the client is refused here with the setting named (librdkafka would only
log it). :class:`ClientErrors` collects what a client reports (a wrong
password, a certificate that does not verify), so a failed connection can say
why.

Every client logs through Python's ``logging`` (logger ``taskstream.kafka``, unless
a role passes its own ``logger``), never straight to stderr: its lines then take
the process's log format, JSON lines included (docs/observability.md, "Logs").
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskstream.errors import ConfigError
from taskstream.settings import Settings

#: Keys a role may not override: they carry the delivery guarantee.
DURABLE_PRODUCER: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
}
FIXED_KEYS = frozenset(DURABLE_PRODUCER)

#: where librdkafka's own lines go (a role may pass another ``logger``)
KAFKA_LOGGER = logging.getLogger("taskstream.kafka")


def _existing(setting: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"{setting}: {path} is not a readable file "
                          f"(TASKSTREAM_{setting.upper()})")
    return str(path)


def security_config(settings: Settings) -> dict[str, Any]:
    """The librdkafka keys of ``settings``' security protocol (none for PLAINTEXT)."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL"):
        password = settings.sasl_password
        config.update({
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": password.get_secret_value() if password is not None else None,
        })
    if protocol.endswith("SSL"):
        config["ssl.endpoint.identification.algorithm"] = "https"
        for key, setting, path in (
                ("ssl.ca.location", "ssl_ca_file", settings.ssl_ca_file),
                ("ssl.certificate.location", "ssl_cert_file", settings.ssl_cert_file),
                ("ssl.key.location", "ssl_key_file", settings.ssl_key_file)):
            location = _existing(setting, path)
            if location is not None:
                config[key] = location
        if settings.ssl_key_password is not None:
            config["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
    return config


def client_config(settings: Settings, overrides: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Any client's base: the brokers, the security keys, then ``overrides``."""
    return {"bootstrap.servers": settings.bootstrap, "logger": KAFKA_LOGGER,
            **security_config(settings), **(overrides or {})}


def admin_config(settings: Settings, overrides: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """An admin client's librdkafka settings (its own log lines silenced by default)."""
    return client_config(settings, {"log_level": 0, **(overrides or {})})


def producer_config(settings: Settings, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A durable producer's librdkafka settings: the fixed keys, then each mapping of overrides.

    Raises :class:`ConfigError` when an override names a fixed key.
    """
    config: dict[str, Any] = {**client_config(settings), **DURABLE_PRODUCER}
    for layer in overrides:
        for key, value in (layer or {}).items():
            if key in FIXED_KEYS:
                raise ConfigError(
                    f"producer config {key!r} cannot be overridden: every taskstream producer "
                    "runs idempotent with acks=all and the murmur2_random partitioner"
                )
            config[key] = value
    return config


def consumer_config(settings: Settings, group_id: str, overrides: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """A consumer's librdkafka settings: never auto-commits; the role adds the rest."""
    return client_config(settings, {"group.id": group_id, "enable.auto.commit": False,
                                    **(overrides or {})})


# -- the asyncio clients (aiokafka, under Faust) ---------------------------------------


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A client TLS context of the settings (None unless the protocol uses TLS)."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=_existing("ssl_ca_file", settings.ssl_ca_file))
    cert = _existing("ssl_cert_file", settings.ssl_cert_file)
    if cert is not None:
        password = settings.ssl_key_password
        context.load_cert_chain(cert, _existing("ssl_key_file", settings.ssl_key_file),
                                password.get_secret_value() if password else None)
    return context


@dataclass(frozen=True)
class SaslCredentials:
    """What an asyncio client needs to authenticate (``repr`` never shows the password)."""

    mechanism: str
    username: str
    password: str
    ssl_context: ssl.SSLContext | None

    def __repr__(self) -> str:
        return f"SaslCredentials({self.mechanism}, username={self.username!r})"


def sasl_credentials(settings: Settings) -> SaslCredentials | None:
    """The SASL credentials of the settings, None unless the protocol is SASL_*."""
    if not settings.security_protocol.startswith("SASL"):
        return None
    assert settings.sasl_username is not None and settings.sasl_password is not None  # validated
    return SaslCredentials(settings.sasl_mechanism, settings.sasl_username,
                           settings.sasl_password.get_secret_value(), ssl_context(settings))


# -- why a client could not connect ----------------------------------------------------

#: librdkafka error names that say the client will never get in as configured
_AUTH_ERRORS = frozenset({"_AUTHENTICATION", "_SSL", "SASL_AUTHENTICATION_FAILED",
                          "_INVALID_ARG", "TOPIC_AUTHORIZATION_FAILED",
                          "CLUSTER_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED"})


class ClientErrors:
    """An ``error_cb`` that keeps the last error a client reported that explains a refusal.

    ``hint()`` turns it into a sentence with what to check (password, CA, ACLs);
    an empty string when nothing such was reported.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last: tuple[str, str] | None = None

    def __call__(self, error: Any) -> None:
        name = error.name()
        if name in _AUTH_ERRORS:
            with self._lock:
                self.last = (name, error.str())

    def hint(self) -> str:
        with self._lock:
            last = self.last
        if last is None:
            return ""
        name, text = last
        if name in ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED"):
            what = ("check TASKSTREAM_SASL_USERNAME / TASKSTREAM_SASL_PASSWORD and "
                    "TASKSTREAM_SASL_MECHANISM")
        elif name == "_SSL":
            what = ("the TLS handshake failed: check TASKSTREAM_SSL_CA_FILE (the CA that signed "
                    "the brokers' certificates) and that the bootstrap host is in their names")
        else:
            what = "the brokers refused this principal: check its ACLs (docs/security.md)"
        return f"{text}; {what}"
