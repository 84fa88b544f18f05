"""docker-compose.yml (the whole stack) and docker-compose.kafka.yml (the broker), checked
without a Docker engine: against the compose-spec JSON schema (a pinned copy in
tests/schemas/, see its README) and for the facts the stack depends on. The SASL_SSL
override, docker-compose.secure.yml, has tests of its own (test_deploy_compose_secure.py).
"""

from __future__ import annotations

import base64
from typing import Any

import jsonschema
import pytest
import yaml

from taskstream.settings import Settings, advertised_url, load_settings
from tests.compose_support import command, env, load
from tests.deploy_support import ROOT, load_schema

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.kafka.yml", "docker-compose.secure.yml"]


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    return load(name)


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def taskstream_services() -> dict[str, dict[str, Any]]:
    """The services that run the taskstream entrypoint."""
    return {name: s for name, s in services().items()
            if s.get("image") == "taskstream:latest" and "entrypoint" not in s}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_the_compose_spec(name: str) -> None:
    schema = load_schema("compose-spec.json")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose(name)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_mistake() -> None:
    broken = compose()
    broken["services"]["worker"]["restart_policy"] = "always"  # not a service key
    schema = load_schema("compose-spec.json")
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def test_three_kraft_nodes_replicate_three_ways_with_min_isr_two() -> None:
    nodes = {n: s for n, s in services().items() if n.startswith("kafka-")}
    assert sorted(nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    voters = set()
    cluster_ids = set()
    for name, node in nodes.items():
        e = env(node)
        assert node["image"] == "apache/kafka:4.3.1"  # D2: the version the tests run
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert f"PLAINTEXT://{name}:9092" in e["KAFKA_ADVERTISED_LISTENERS"]
        assert f"{e['KAFKA_NODE_ID']}@{name}:9093" in e["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        voters.add(e["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        cluster_ids.add(e["CLUSTER_ID"])
        assert any(v.startswith(f"{name}-data:") for v in node["volumes"])
    assert len(voters) == 1 and len(cluster_ids) == 1
    (cluster_id,) = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # a Kafka Uuid


def test_every_taskstream_service_has_settings_the_code_accepts() -> None:
    for name, service in taskstream_services().items():
        overrides = {k[len("TASKSTREAM_"):].lower(): v for k, v in env(service).items()
                     if k.startswith("TASKSTREAM_")}
        unknown = set(overrides) - set(Settings.model_fields)
        assert not unknown, f"{name}: no such settings {unknown}"
        settings = Settings.model_validate({k: _json_or_str(v) for k, v in overrides.items()})
        assert settings.bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092", name
        assert settings.replication == 3, name


def _json_or_str(value: str) -> Any:
    return yaml.safe_load(value) if value.startswith("[") else value


def test_topics_job_runs_once_after_every_broker_is_healthy() -> None:
    topics = services()["topics"]
    assert command(topics)[:2] == ["topics", "create"]
    assert topics["restart"] == "no"
    assert topics["depends_on"] == {f"kafka-{i}": {"condition": "service_healthy"}
                                    for i in (1, 2, 3)}


def test_two_processors_each_with_its_own_volume_and_address() -> None:
    procs = {n: s for n, s in services().items() if n.startswith("processor-")}
    assert sorted(procs) == ["processor-0", "processor-1"]
    volumes = []
    for name, proc in procs.items():
        assert command(proc) == ["processor"]
        assert env(proc)["TASKSTREAM_ADVERTISED_URL"] == f"http://{name}:6066"
        assert proc["hostname"] == name
        (volume,) = proc["volumes"]
        assert volume.endswith(":/var/lib/taskstream/data")  # the image's TASKSTREAM_DATA_DIR
        volumes.append(volume.split(":")[0])
        assert proc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert "/readyz" in " ".join(proc["healthcheck"]["test"])
    assert len(set(volumes)) == 2, "two replicas must never share a data directory"
    assert all(v in compose()["volumes"] for v in volumes)


def test_workers_scale_and_are_scraped_wherever_they_run() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    argv = command(worker)
    assert argv[:3] == ["worker", "-A", "examples.tasks"]
    port = int(argv[argv.index("--metrics-port") + 1])
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    (sd,) = jobs["taskstream-worker"]["dns_sd_configs"]
    assert sd["port"] == port and set(sd["names"]) <= set(services())
    assert "worker" in sd["names"]
    targets = jobs["taskstream-processor"]["static_configs"][0]["targets"]
    assert sorted(targets) == ["processor-0:6066", "processor-1:6066"]
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert (ROOT / "deploy/prometheus/rules").is_dir()


def test_dev_profile_mounts_the_task_source_and_reloads() -> None:
    dev = services()["worker-dev"]
    assert dev["profiles"] == ["dev"]
    assert "--reload" in command(dev)
    assert "./examples:/app/examples:ro" in dev["volumes"]
    assert env(dev)["WATCHFILES_FORCE_POLLING"] == "true"


def test_bind_mounts_exist_and_grafana_is_provisioned() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
    grafana = services()["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "deploy/grafana/provisioning"
    (datasource,) = yaml.safe_load(
        (provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards/taskstream.yml").read_text())["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_loaded_settings_of_a_processor_advertise_its_service_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    proc = services()["processor-1"]
    for key, value in env(proc).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TASKSTREAM_WEB_HOST", "0.0.0.0")  # the image's ENV
    assert advertised_url(load_settings()) == "http://processor-1:6066"
