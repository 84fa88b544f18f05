"""k8s/: the Kustomize base and overlays, rendered by kustomize and checked offline.

Given ``kustomize build`` of the base, the dev and prod overlays and prod with the
HPA component instead of KEDA, then every Kubernetes object validates (strict) against
the Kubernetes JSON schemas of ``kubernetes-validate`` for the oldest and newest
versions we support, every ScaledObject against the pinned KEDA CRD schema, and the
facts the platform depends on hold: a PVC per processor replica, the headless Service
its peers route through, the advertised URL from the pod's DNS name, readiness on
/readyz, graceful termination, one worker Deployment per queue scaled on its own
consumer group. No cluster runs here: docs/deploy.md says what that leaves out.
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from taskstream.settings import Settings, advertised_url
from tests.deploy_support import ROOT, load_schema, render

K8S = ROOT / "k8s"
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # the oldest and newest we validate against
OVERLAYS = ["base", "overlays/dev", "overlays/prod", "prod-hpa"]


@cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    if name == "prod-hpa":
        return tuple(render(_prod_with_hpa()))
    return tuple(render(K8S / name))


def _prod_with_hpa() -> Path:
    """prod, with the HPA component in place of KEDA (an overlay made for the test,
    inside k8s/ so kustomize's load restrictor accepts it)."""
    overlay = K8S / "overlays" / ".test-prod-hpa"
    shutil.rmtree(overlay, ignore_errors=True)
    overlay.mkdir()
    prod = (K8S / "overlays/prod/kustomization.yaml").read_text()
    text = prod.replace("../../components/keda", "../../components/hpa-external")
    assert text != prod
    (overlay / "kustomization.yaml").write_text(text)
    shutil.copy(K8S / "overlays/prod/namespace.yaml", overlay / "namespace.yaml")
    return overlay


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Any:
    yield
    shutil.rmtree(K8S / "overlays" / ".test-prod-hpa", ignore_errors=True)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (cm,) = of_kind(docs, "ConfigMap")
    data: dict[str, str] = cm["data"]
    return data


# -- schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_matches_its_schema(overlay: str, version: str) -> None:
    for doc in rendered(overlay):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']} on {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def keda_validator() -> jsonschema.protocols.Validator:
    crd = load_schema("keda-scaledobject-v1alpha1.yaml")
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    schema = version["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def test_scaled_objects_match_the_pinned_keda_crd() -> None:
    scaled = of_kind(rendered("overlays/prod"), "ScaledObject")
    assert scaled, "prod scales its workers with KEDA"
    validator = keda_validator()
    for doc in scaled:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        errors = list(validator.iter_errors(doc))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_keda_schema_catches_a_mistake() -> None:
    doc = dict(one(rendered("overlays/prod"), "ScaledObject"))
    broken = {**doc, "spec": {**doc["spec"], "minReplicaCount": "one"}}
    assert not keda_validator().is_valid(broken)
    missing = {**doc, "spec": {k: v for k, v in doc["spec"].items() if k != "triggers"}}
    assert not keda_validator().is_valid(missing)


def test_kubernetes_validate_catches_a_mistake() -> None:
    sts = one(rendered("base"), "StatefulSet")
    broken = {**sts, "spec": {**sts["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# -- processors ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_processors_are_a_statefulset_with_a_volume_each(overlay: str) -> None:
    docs = rendered(overlay)
    sts = one(docs, "StatefulSet", "taskstream-processor")
    spec = sts["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    c = container(sts)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    env = {e["name"]: e for e in c["env"]}
    assert mounts[claim["metadata"]["name"]] == env["TASKSTREAM_DATA_DIR"]["value"]
    headless = one(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= \
        spec["template"]["metadata"]["labels"].items()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["args"] == ["processor"]
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        spec["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_replica_advertises_its_pod_dns_name(overlay: str) -> None:
    docs = rendered(overlay)
    sts = one(docs, "StatefulSet", "taskstream-processor")
    names = [e["name"] for e in container(sts)["env"]]
    env = {e["name"]: e for e in container(sts)["env"]}
    # $(VAR) expands only variables defined earlier in the list
    assert names.index("POD_NAME") < names.index("TASKSTREAM_ADVERTISED_URL")
    assert names.index("POD_NAMESPACE") < names.index("TASKSTREAM_ADVERTISED_URL")
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    namespace = sts["metadata"].get("namespace", "default")
    pod = f"{sts['metadata']['name']}-1"
    url = env["TASKSTREAM_ADVERTISED_URL"]["value"] \
        .replace("$(POD_NAME)", pod).replace("$(POD_NAMESPACE)", namespace)
    headless = sts["spec"]["serviceName"]
    assert url == f"http://{pod}.{headless}.{namespace}.svc:{config(docs)['TASKSTREAM_WEB_PORT']}"
    settings = Settings(**_settings_from(config(docs)), advertised_url=url,
                        web_host=env["TASKSTREAM_WEB_HOST"]["value"])
    assert advertised_url(settings) == url  # the setting accepts it, the app will use it


def _settings_from(data: dict[str, str]) -> dict[str, Any]:
    import json

    return {k[len("TASKSTREAM_"):].lower(): json.loads(v) if v.startswith("[") else v
            for k, v in data.items() if k.startswith("TASKSTREAM_")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_holds_settings_the_code_accepts(overlay: str) -> None:
    data = config(rendered(overlay))
    unknown = {k for k in _settings_from(data)} - set(Settings.model_fields)
    assert not unknown
    settings = Settings(**_settings_from(data))
    assert settings.queues == ["default"]


def test_overlays_size_the_processors() -> None:
    dev, prod = rendered("overlays/dev"), rendered("overlays/prod")
    assert one(dev, "StatefulSet")["spec"]["replicas"] == 1
    assert config(dev)["TASKSTREAM_STANDBY_REPLICAS"] == "0"
    sts = one(prod, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert int(config(prod)["TASKSTREAM_PARTITIONS"]) >= sts["spec"]["replicas"]
    assert config(prod)["TASKSTREAM_STANDBY_REPLICAS"] == "1"
    assert container(sts)["image"] == "registry.example.com/taskstream:0.1.0"
    assert not of_kind(prod, "Secret"), "prod takes its Secret from the secret store"
    assert of_kind(dev, "Secret")


# -- workers, the topics job, policies -------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_deployment_per_queue(overlay: str) -> None:
    docs = rendered(overlay)
    queues = _settings_from(config(docs))["queues"]
    workers = [d for d in of_kind(docs, "Deployment")
               if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name")
               == "taskstream-worker"]
    by_queue = {d["spec"]["template"]["metadata"]["labels"]["taskstream.io/queue"]: d
                for d in workers}
    assert sorted(by_queue) == sorted(queues)
    for queue, deployment in by_queue.items():
        args = container(deployment)["args"]
        assert args[args.index("--queues") + 1] == queue
        grace = float(args[args.index("--grace") + 1])
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_keda_scales_each_queue_on_its_own_consumer_group() -> None:
    docs = rendered("overlays/prod")
    prefix = config(docs)["TASKSTREAM_TOPIC_PREFIX"]
    settings = Settings(**_settings_from(config(docs)))
    for scaled in of_kind(docs, "ScaledObject"):
        target = one(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        queue = target["spec"]["template"]["metadata"]["labels"]["taskstream.io/queue"]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        # the group the worker joins (workers/consumer.py): f"{prefix}workers.{queue}"
        assert trigger["metadata"]["consumerGroup"] == f"{prefix}workers.{queue}"
        assert trigger["metadata"]["bootstrapServers"] == settings.bootstrap
        assert scaled["spec"]["scaleTargetRef"]["envSourceContainerName"] == \
            container(target)["name"]
        # more members than partitions would idle: ready partitions x priority levels
        assert scaled["spec"]["maxReplicaCount"] == \
            settings.ready_partitions * settings.priority_levels
        args = container(target)["args"]
        concurrency = int(args[args.index("--concurrency") + 1])
        assert int(trigger["metadata"]["lagThreshold"]) == 2 * concurrency


def test_the_hpa_alternative_targets_the_same_workers() -> None:
    docs = rendered("prod-hpa")
    assert not of_kind(docs, "ScaledObject")
    hpa = one(docs, "HorizontalPodAutoscaler")
    keda = one(rendered("overlays/prod"), "ScaledObject")
    assert hpa["spec"]["scaleTargetRef"]["name"] == keda["spec"]["scaleTargetRef"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["selector"]["matchLabels"]["consumergroup"] == \
        keda["spec"]["triggers"][0]["metadata"]["consumerGroup"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == \
        (keda["spec"]["minReplicaCount"], keda["spec"]["maxReplicaCount"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_job_and_every_pod_run_unprivileged(overlay: str) -> None:
    docs = rendered(overlay)
    job = one(docs, "Job", "taskstream-topics")
    assert container(job)["args"][:2] == ["topics", "create"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    for workload in [*of_kind(docs, "StatefulSet"), *of_kind(docs, "Deployment"), job]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        c = container(workload)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
        assert refs == {config_name(docs), "taskstream-secrets"}
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert set(requests) == set(limits) == {"cpu", "memory"}


def config_name(docs: tuple[dict[str, Any], ...]) -> str:
    (cm,) = of_kind(docs, "ConfigMap")
    name: str = cm["metadata"]["name"]
    assert name.startswith("taskstream-config-")  # hashed: a change rolls the pods
    return name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_in_only_what_each_pod_serves(overlay: str) -> None:
    docs = rendered(overlay)
    policies = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")}
    deny = policies["taskstream-default-deny-ingress"]
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    sts = one(docs, "StatefulSet")
    processor_labels = sts["spec"]["template"]["metadata"]["labels"]
    (rule,) = policies["taskstream-processor-ingress"]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [
        sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]]
    assert policies["taskstream-processor-ingress"]["spec"]["podSelector"]["matchLabels"] \
        .items() <= processor_labels.items()
    egress = policies["taskstream-egress"]["spec"]["podSelector"]["matchLabels"]
    for workload in [*of_kind(docs, "StatefulSet"), *of_kind(docs, "Deployment"),
                     *of_kind(docs, "Job")]:
        assert egress.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
