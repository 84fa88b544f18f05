"""Shared fixtures: one real Kafka broker per test session, isolated topics per test.

``kafka_bootstrap`` uses ``TASKSTREAM_BOOTSTRAP`` when set (CI starts the broker
with ``taskstream kafka up``); otherwise it starts a broker through
:mod:`taskstream.localkafka.cluster` on free ports in a temporary directory and stops it
when the session ends. Tests that use it are marked ``kafka`` automatically, so
``pytest -m "not kafka"`` runs the broker-free tier.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from taskstream.admin import ensure_topics
from taskstream.localkafka import cluster as localkafka
from taskstream.settings import Settings, load_settings

# Property tests check behaviour, never speed: a slow example on a shared, noisy machine is not
# a failure (Hypothesis' default 200 ms deadline made such runs fail as "Flaky").
hypothesis.settings.register_profile("taskstream", deadline=None, print_blob=True)
hypothesis.settings.load_profile("taskstream")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # fixturenames is the whole closure: a test using `topics` needs the broker too
        needs_kafka = "kafka_bootstrap" in getattr(item, "fixturenames", ())
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
    """Like ``settings``, with every platform topic created."""
    ensure_topics(settings)
    return settings
