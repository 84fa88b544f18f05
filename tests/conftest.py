"""Shared fixtures: one real Kafka broker per test session, isolated topics per test.

``kafka_bootstrap`` uses ``TASKSTREAM_BOOTSTRAP`` when set (CI starts the broker
with ``taskstream kafka up``); otherwise it starts a broker through
:mod:`taskstream.localkafka.cluster` on free ports in a temporary directory and stops it
when the session ends. Tests that use it are marked ``kafka`` automatically, so
``pytest -m "not kafka"`` runs the broker-free tier.

``secure_cluster`` is a second broker, secured (``kafka up --secure``: SASL_SSL, a
SCRAM user per role, ACLs), started the first time a test asks for it and stopped
when the session ends (about 30 s, once). ``secure_roles`` gives a test the
settings of every role under a topic prefix of its own, with that prefix's ACLs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from taskstream.acls import Role, apply_acls
from taskstream.localkafka import cluster as localkafka
from taskstream.localkafka import secure as security
from taskstream.locals3.server import LocalS3
from taskstream.queue_registry import set_up_platform
from taskstream.settings import Settings, load_settings

# Property tests check behaviour, never speed: a slow example on a shared, noisy machine is not
# a failure (Hypothesis' default 200 ms deadline made such runs fail as "Flaky").
hypothesis.settings.register_profile("taskstream", deadline=None, print_blob=True)
hypothesis.settings.load_profile("taskstream")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # fixturenames is the whole closure: a test using `topics` needs the broker too
        names = getattr(item, "fixturenames", ())
        needs_kafka = "kafka_bootstrap" in names or "secure_cluster" in names
        if needs_kafka and item.get_closest_marker("kafka") is None:
            item.add_marker(pytest.mark.kafka)


def _kafka_home() -> Path:
    """The real jar cache (so a test session never resolves the jars twice)."""
    return load_settings().kafka_home


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a running broker for the whole session."""
    given = os.environ.get("TASKSTREAM_BOOTSTRAP")
    if given:
        yield given
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    base = load_settings(kafka_home=_kafka_home())
    started = localkafka.up(base, port=localkafka.free_port_block(2), data_dir=data_dir,
                            timeout=180.0)
    try:
        yield started.cluster.bootstrap
    finally:
        if not started.already_running:
            localkafka.down(data_dir)


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings of one test: its own topic prefix and data dir, the session's broker."""
    return load_settings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        data_dir=tmp_path / "data",
        kafka_home=_kafka_home(),
    )


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """Like ``settings``, with every platform topic created and the settings' queues
    registered (what ``taskstream topics create`` does)."""
    set_up_platform(settings)
    return settings


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real S3-compatible server (S3Proxy, filesystem backend) for the session (D36)."""
    server = LocalS3.install(tmp_path_factory.mktemp("s3"), load_settings())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: LocalS3) -> dict[str, str]:
    """TASKSTREAM_STORAGE_* variables of one test: the session's server, a bucket of its own
    (created)."""
    from taskstream.objectstore.store import ObjectStore

    env = s3_server.settings_env(f"t{uuid.uuid4().hex[:12]}")
    store = ObjectStore.from_settings(load_settings(**storage_fields(env)))
    assert store is not None
    store.ensure_bucket()
    return env


def storage_fields(env: dict[str, str]) -> dict[str, str]:
    """TASKSTREAM_STORAGE_X=v as settings keywords (storage_x=v)."""
    return {k.removeprefix("TASKSTREAM_").lower(): v for k, v in env.items()}


@pytest.fixture(scope="session")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[localkafka.Cluster, security.SecureFiles]]:
    """A secured broker (SASL_SSL, users per role, ACLs) for the whole session."""
    data_dir = tmp_path_factory.mktemp("kafka-secure")
    base = load_settings(kafka_home=_kafka_home())
    started = localkafka.up(base, port=localkafka.free_port_block(2), data_dir=data_dir,
                            timeout=180.0, secure=True)
    try:
        yield started.cluster, security.prepare(data_dir)
    finally:
        localkafka.down(data_dir)


class Roles:
    """Settings of each role on the secured broker, under one test's topic prefix."""

    def __init__(self, cluster: localkafka.Cluster, files: security.SecureFiles,
                 prefix: str, data_dir: Path) -> None:
        self.cluster, self.files, self.prefix, self.data_dir = cluster, files, prefix, data_dir

    def __call__(self, role: Role | str, **overrides: object) -> Settings:
        user = role.value if isinstance(role, Role) else role
        values: dict[str, object] = {
            **security.role_overrides(self.files, user, self.cluster.bootstrap, self.prefix),
            "data_dir": self.data_dir, "kafka_home": _kafka_home()}
        if user in ("processor", "worker", "admin"):
            values["signing_keyring_file"] = self.files.keyring(user)
        values.update(overrides)
        return load_settings(**values)


@pytest.fixture
def secure_roles(secure_cluster: tuple[localkafka.Cluster, security.SecureFiles],
                 tmp_path: Path) -> Roles:
    """Every role's settings under a fresh topic prefix whose ACLs the admin role just set
    (the admin may alter ACLs), with the platform's topics created by the admin."""
    cluster, files = secure_cluster
    roles = Roles(cluster, files, f"s{uuid.uuid4().hex[:8]}.", tmp_path / "data")
    admin = roles(Role.ADMIN)
    apply_acls(admin, {role: f"User:{role.value}" for role in Role})
    set_up_platform(admin)
    return roles
