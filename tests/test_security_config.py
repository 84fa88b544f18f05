"""Security settings, client configs, ACLs as data, the API's TLS rules (no broker)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskstream.acls import Kind, Role, bindings, role_grants
from taskstream.cli.main import main
from taskstream.errors import ConfigError
from taskstream.kafka_config import (
    ClientErrors,
    consumer_config,
    producer_config,
    sasl_credentials,
    security_config,
    ssl_context,
)
from taskstream.localkafka.certs import make_ca, make_leaf
from taskstream.security.keyring import keyring_json, new_secret
from taskstream.security.tls import client_context, may_send_token, server_context
from taskstream.settings import load_settings, mask_url, masked

SECURE = {"security_protocol": "SASL_SSL", "sasl_username": "worker",
          "sasl_password": "pw-hunter2"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("tls")).cert


# -- settings --------------------------------------------------------------------------------

def test_sasl_needs_a_user_and_a_password() -> None:
    with pytest.raises(ConfigError, match="sasl_username and sasl_password"):
        load_settings(security_protocol="SASL_SSL", sasl_username="x")


def test_a_bad_protocol_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="security_protocol"):
        load_settings(security_protocol="SASL_TLS")


@pytest.mark.parametrize("pair", [{"ssl_cert_file": "c.pem"}, {"api_tls_key": "k.pem"}])
def test_certificates_come_with_their_keys(pair: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_settings(**pair)


def test_the_payload_limit_stays_below_the_event_budget() -> None:
    with pytest.raises(ConfigError, match="max_event_bytes"):
        load_settings(max_payload_bytes=2_000_000, max_event_bytes=1_000_000)


@pytest.mark.parametrize(("text", "shown"), [
    ("https://user:pw@host:8081/x", "https://user:***@host:8081/x"),
    ("http://token@host", "http://***@host"),
    ("http://host:6066", "http://host:6066"),
    ("a:1,b:2", "a:1,b:2"),
    ("sasl://u:p@[::1]:9092", "sasl://u:***@[::1]:9092"),
])
def test_credentials_in_urls_are_masked(text: str, shown: str) -> None:
    assert mask_url(text) == shown


def test_config_show_masks_every_secret(tmp_path: Path) -> None:
    ring = keyring_json({"k1": new_secret()}, "k1")
    env = {
        "TASKSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "TASKSTREAM_SASL_USERNAME": "admin",
        "TASKSTREAM_SASL_PASSWORD": "pw-hunter2", "TASKSTREAM_SSL_KEY_PASSWORD": "kp-hunter2",
        "TASKSTREAM_PAYLOAD_KEYS": ring, "TASKSTREAM_API_TOKEN": "tok-hunter2",
        "TASKSTREAM_SCHEMA_REGISTRY_URL": "https://reg:pw-hunter2@registry:8081",
        "TASKSTREAM_API_URL": "https://u:pw-hunter2@api:6066",
    }
    result = CliRunner().invoke(main, ["config", "show", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and json.loads(ring)["keys"]["k1"] not in result.output
    data = json.loads(result.output)
    assert data["sasl_password"] == data["payload_keys"] == data["api_token"] == "***"
    assert data["sasl_username"] == "admin"
    assert data["schema_registry_url"] == "https://reg:***@registry:8081"
    assert masked(load_settings(**SECURE))["sasl_password"] == "***"


# -- Kafka client configs -----------------------------------------------------------------------

def test_plaintext_adds_nothing() -> None:
    assert security_config(load_settings()) == {}
    assert ssl_context(load_settings()) is None and sasl_credentials(load_settings()) is None


def test_every_client_config_carries_the_security_keys(ca: Path) -> None:
    settings = load_settings(**SECURE, ssl_ca_file=ca)
    keys = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "worker", "sasl.password": "pw-hunter2",
            "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "https"}
    for config in (producer_config(settings), consumer_config(settings, "g")):
        assert keys.items() <= config.items()


def test_a_missing_ca_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    settings = load_settings(**SECURE, ssl_ca_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="ssl_ca_file"):
        producer_config(settings)


def test_the_asyncio_clients_get_the_same_credentials(ca: Path) -> None:
    creds = sasl_credentials(load_settings(**SECURE, ssl_ca_file=ca))
    assert creds is not None and creds.username == "worker"
    assert creds.mechanism == "SCRAM-SHA-512" and isinstance(creds.ssl_context, ssl.SSLContext)
    assert "pw-hunter2" not in repr(creds)


class _Err:
    def __init__(self, name: str, text: str) -> None:
        self._name, self._text = name, text

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text


@pytest.mark.parametrize(("name", "says"), [
    ("_AUTHENTICATION", "TASKSTREAM_SASL_PASSWORD"),
    ("_SSL", "TASKSTREAM_SSL_CA_FILE"),
    ("TOPIC_AUTHORIZATION_FAILED", "ACLs"),
])
def test_a_refused_client_says_what_to_check(name: str, says: str) -> None:
    errors = ClientErrors()
    assert errors.hint() == ""
    errors(_Err("_TRANSPORT", "down"))  # not a refusal: ignored
    errors(_Err(name, "broker said no"))
    assert "broker said no" in errors.hint() and says in errors.hint()


# -- ACLs as data ----------------------------------------------------------------------------

def _can(role: Role, kind: Kind, name: str, op: str) -> bool:
    settings = load_settings(topic_prefix="ts.")
    for grant in role_grants(settings, role):
        matches = name.startswith(grant.name) if grant.prefixed else name == grant.name
        if grant.kind is kind and matches and any(
                o.name in (op, "ALL") for o in grant.operations):
            return True
    return False


@pytest.mark.parametrize(("role", "kind", "name", "op", "allowed"), [
    (Role.SUBMITTER, Kind.TOPIC, "ts.events", "WRITE", True),
    (Role.SUBMITTER, Kind.TOPIC, "ts.events", "READ", False),
    (Role.SUBMITTER, Kind.TOPIC, "ts.queues", "READ", True),
    (Role.SUBMITTER, Kind.TOPIC, "ts.queues", "WRITE", False),
    (Role.SUBMITTER, Kind.TOPIC, "ts.ready.default.p0", "READ", False),
    (Role.SUBMITTER, Kind.TOPIC, "ts.dlq", "WRITE", False),
    (Role.WORKER, Kind.TOPIC, "ts.ready.default.p0", "READ", True),
    (Role.WORKER, Kind.TOPIC, "ts.ready.default.p0", "WRITE", False),
    (Role.WORKER, Kind.TOPIC, "ts.ready.default.t.gpu.p0", "READ", True),  # tags (D38)
    (Role.WORKER, Kind.TOPIC, "ts.events", "WRITE", True),
    (Role.WORKER, Kind.TOPIC, "ts.events", "READ", False),
    (Role.WORKER, Kind.TOPIC, "ts.processor-tasks-changelog", "READ", False),
    (Role.WORKER, Kind.GROUP, "ts.workers.default", "READ", True),
    (Role.WORKER, Kind.GROUP, "ts.processor", "READ", False),
    (Role.PROCESSOR, Kind.TOPIC, "ts.events", "READ", True),
    (Role.PROCESSOR, Kind.TOPIC, "ts.ready.new.p2", "CREATE", True),
    (Role.PROCESSOR, Kind.TOPIC, "ts.ready.new.t.gpu.ssd.p2", "CREATE", True),
    (Role.PROCESSOR, Kind.GROUP, "ts.workers.default", "DESCRIBE", True),  # lag
    (Role.PROCESSOR, Kind.GROUP, "ts.workers.default", "READ", False),
    (Role.PROCESSOR, Kind.TOPIC, "ts.processor-tasks-changelog", "CREATE", True),
    (Role.PROCESSOR, Kind.TOPIC, "ts.events", "CREATE", False),
    (Role.PROCESSOR, Kind.TOPIC, "ts.events", "DELETE", False),
    (Role.PROCESSOR, Kind.CLUSTER, "kafka-cluster", "ALTER", False),
    (Role.ADMIN, Kind.TOPIC, "ts.events", "DELETE", True),
    (Role.ADMIN, Kind.CLUSTER, "kafka-cluster", "ALTER", True),
    (Role.ADMIN, Kind.TOPIC, "other.events", "READ", False),
])
def test_each_role_gets_what_it_must_and_nothing_else(
        role: Role, kind: Kind, name: str, op: str, allowed: bool) -> None:
    assert _can(role, kind, name, op) is allowed


def test_a_worker_can_be_narrowed_to_its_queues() -> None:
    settings = load_settings(topic_prefix="ts.")
    names = {g.name for g in role_grants(settings, Role.WORKER, ["images"])}
    assert "ts.ready.images." in names and "ts.ready." not in names
    # a queue's tagged topics (D38) share its prefix; no other queue's do
    for name, readable in (("ts.ready.images.t.gpu.p0", True), ("ts.ready.images2.p0", False)):
        assert any(name.startswith(g.name) for g in role_grants(
            settings, Role.WORKER, ["images"]) if g.kind is Kind.TOPIC) is readable


def test_bindings_are_allow_rules_for_the_principal() -> None:
    found = bindings("User:w", role_grants(load_settings(), Role.WORKER))
    assert found and all(b.principal == "User:w" and b.host == "*" for b in found)


# -- the API over TLS -------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "ok"), [
    ("https://api.example:6066/tasks", True),
    ("http://127.0.0.1:6066", True),
    ("http://[::1]:6066", True),
    ("http://localhost:6066", True),
    ("http://10.0.0.5:6066", False),
    ("http://processor-1.svc:6066", False),
    ("ftp://127.0.0.1", False),
])
def test_a_token_goes_over_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    assert may_send_token(url) is ok


def test_the_server_and_client_contexts(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    leaf = make_leaf(ca, tmp_path, "api", "api")
    settings = load_settings(api_tls_cert=leaf.cert, api_tls_key=leaf.key, api_ca_file=ca.cert)
    assert settings.api_scheme == "https"
    assert server_context(settings) is not None
    assert client_context(settings).check_hostname
    assert server_context(load_settings()) is None
    with pytest.raises(ConfigError, match="api_tls_cert"):
        server_context(load_settings(api_tls_cert=ca.key, api_tls_key=ca.key))
    with pytest.raises(ConfigError, match="api_ca_file"):
        client_context(load_settings(api_ca_file=tmp_path / "missing.pem"))


def test_a_token_is_never_forwarded_to_a_plain_http_peer_off_loopback() -> None:
    from yarl import URL

    from taskstream.api.errors import ApiError
    from taskstream.api.service import Api, _segment

    api = Api.__new__(Api)  # the refusal comes before any state or socket is used
    with pytest.raises(ApiError) as info:
        asyncio.run(api.peer_get(URL("http://10.9.8.7:6066"), "/tasks/X", {},
                                 {"Authorization": "Bearer secret"}))
    assert info.value.status == 502 and info.value.code == "insecure_peer"
    assert "TLS" in info.value.message
    assert _segment("../internal/tasks") == "..%2Finternal%2Ftasks"
    with pytest.raises(ApiError):
        _segment("..")
