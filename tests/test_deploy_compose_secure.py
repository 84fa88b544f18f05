"""docker-compose.secure.yml, the platform over SASL_SSL (D41), checked without a Docker
engine.

Broker-free: the override and the stack it makes with docker-compose.yml (merged by
Compose's rules, interpolated from a made-up .env) are valid against the compose-spec
schema, and hold to the code: every broker's listeners and security settings are what
the platform's client settings expect and what ``kafka up --secure`` sets
(``SECURE_BROKER``); every service's client names a SCRAM user the init step creates,
with the same password variable; the ACLs applied are those of taskstream/acls.py for
the platform's topic prefix; published ports bind 127.0.0.1; every password comes from
.env and none is written in the files.

With the broker jars (``kafka``): the same three brokers run here, from these very
settings (the image's env-to-properties rule; host names and ports moved to free
loopback ports, paths to a temporary directory), and the stack's own commands run
against them in order: the init script, the brokers' health check, secure-setup's
script, the topics job, a processor and a worker as their roles; a task submitted
from "the host" over the external listener succeeds, and the ACLs on the brokers are
exactly the ones acls.py makes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from cryptography import x509

from taskstream.acls import Role, bindings, role_grants
from taskstream.admin import admin_client
from taskstream.dev.procs import free_port
from taskstream.localkafka import secure
from taskstream.localkafka.certs import ca_files
from taskstream.localkafka.config import (
    BROKER_USER,
    SCRAM_SERVER_JAAS,
    SECURE_BROKER,
    NodeLayout,
    log4j2_properties,
)
from taskstream.localkafka.install import ensure_kafka
from taskstream.settings import Settings, load_settings
from taskstream.users import MECHANISM, check_password
from tests.compose_support import (
    MissingVariable,
    broker_properties,
    command,
    env,
    interpolate,
    listeners,
    load,
    merge,
    script_lines,
    variables_used,
)
from tests.deploy_support import ROOT, load_schema
from tests.harness import wait_for

OVERRIDE = "docker-compose.secure.yml"
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
#: the clients of the stack, each as one role
CLIENTS = ("topics", "processor-0", "processor-1", "worker", "worker-dev")


@functools.cache
def dotenv() -> dict[str, str]:
    """A .env made by the snippet in docs/deploy.md, run as written (bash, in a temporary
    folder): its variables."""
    text = (ROOT / "docs/deploy.md").read_text()
    section = text[text.index("## Compose over SASL_SSL"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    upto = next(i for i, line in enumerate(lines) if "> .env" in line)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["bash", "-euc", "\n".join(lines[:upto + 1])], cwd=folder, check=True,
                       timeout=60)
        made = Path(folder) / ".env"
        assert made.stat().st_mode & 0o077 == 0, "the passwords must be 0600"
        pairs = [line.split("=", 1) for line in made.read_text().splitlines() if line]
    return dict(pairs)


def stack(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker compose -f docker-compose.yml -f docker-compose.secure.yml config``."""
    merged = merge(load("docker-compose.yml"), load(OVERRIDE))
    return dict(interpolate(merged, dotenv() if variables is None else variables))


def services(variables: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = stack(variables)["services"]
    return found


def stack_raw_services() -> dict[str, dict[str, Any]]:
    """The merged stack before interpolation (the ``${...}`` references as written)."""
    found: dict[str, dict[str, Any]] = merge(load("docker-compose.yml"),
                                             load(OVERRIDE))["services"]
    return found


def settings_of(service: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {k[len("TASKSTREAM_"):].lower(): v
                              for k, v in env(service).items() if k.startswith("TASKSTREAM_")}
    if "queues" in values:
        values["queues"] = json.loads(values["queues"])
    return Settings.model_validate(values)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> named volume."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def scram_users(svc: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What secure-setup's ``users set`` creates: user -> the variable of its password."""
    (users,) = [line for line in script_lines(svc["secure-setup"])
                if line[:3] == ["taskstream", "users", "set"]]
    return dict(pair.split("=", 1) for pair in users[3:])


def init_hosts(svc: dict[str, dict[str, Any]]) -> list[str]:
    (made,) = [line for line in script_lines(svc["secure-init"])
               if line[:3] == ["taskstream", "kafka", "secrets"]]
    return [made[i + 1] for i, arg in enumerate(made) if arg == "--host"]


# -- broker-free: the files against the schema and the code ----------------------------


def test_the_secured_stack_matches_the_compose_spec() -> None:
    schema = load_schema("compose-spec.json")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(stack()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_every_password_comes_from_env_and_none_is_written_down() -> None:
    used = variables_used(load(OVERRIDE))
    passwords = {name: op for name, op in used.items() if name.endswith("_PASSWORD")}
    assert sorted(passwords) == sorted(f"SCRAM_{role.name}_PASSWORD" for role in Role)
    assert set(passwords.values()) == {":?"}, "a missing password must stop Compose"
    # the documented .env holds every one, strong enough, and names both files
    made = dotenv()
    assert set(passwords) <= set(made)
    for name in passwords:
        check_password(name, made[name])
    assert made["COMPOSE_FILE"].split(":") == ["docker-compose.yml", OVERRIDE]
    with pytest.raises(MissingVariable):
        stack({})
    text = (ROOT / OVERRIDE).read_text()
    assert "password=" not in text.lower().replace("_password=", "")
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_brokers_listen_as_the_clients_connect() -> None:
    svc = services()
    clients = {name: settings_of(svc[name]) for name in CLIENTS}
    setup = settings_of(svc["secure-setup"])
    for name in BROKERS:
        props = broker_properties(env(svc[name]))
        protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
        bound = listeners(props["listeners"])
        advertised = listeners(props["advertised.listeners"])
        assert set(advertised) | {"CONTROLLER"} == set(bound) == set(protocols)
        # the image's start script demands JKS stores when it sees these in the name
        assert "SSL://" not in props["advertised.listeners"]
        assert not re.search(r"SASL_.*://", props["advertised.listeners"])
        for key, value in SECURE_BROKER.items():
            assert props[key] == value, (name, key)
        by_address = {address: listener for listener, address in advertised.items()}
        for client, settings in [*clients.items(), ("secure-setup", setup)]:
            host, _, port = settings.bootstrap.split(",")[BROKERS.index(name)].rpartition(":")
            listener = by_address[(host, int(port))]
            assert protocols[listener] == settings.security_protocol, (name, client)
            if settings.security_protocol == "SASL_SSL":
                assert settings.sasl_mechanism == MECHANISM in props["sasl.enabled.mechanisms"]
                jaas = f"listener.name.{listener.lower()}.{MECHANISM.lower()}.sasl.jaas.config"
                assert props[jaas] == SCRAM_SERVER_JAAS, (name, listener)
            else:  # mutual TLS as the brokers' principal
                assert props[f"listener.name.{listener.lower()}.ssl.client.auth"] == "required"
        # brokers among themselves and the controller quorum: mutual TLS, never SCRAM
        for internal in (props["inter.broker.listener.name"],
                         props["controller.listener.names"]):
            assert protocols[internal] == "SSL"
            assert props[f"listener.name.{internal.lower()}.ssl.client.auth"] == "required"
        assert protocols["EXTERNAL"] == "SASL_SSL"


def test_the_brokers_read_what_the_init_step_writes(tmp_path: Path) -> None:
    svc = services()
    init_mounts = mounts(svc["secure-init"])
    made = secure.deploy_files(tmp_path, tuple(init_hosts(svc)))
    assert made == {"tls": True, "keyrings": True}
    volume_dir = {volume: tmp_path / Path(target).name for target, volume in init_mounts.items()}
    assert set(init_mounts) == {f"/secure/{Path(t).name}" for t in init_mounts}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [secure.BROKERS_DIR, *secure.KEYRING_READERS])
    cert = x509.load_pem_x509_certificate(
        (volume_dir["kafka-tls"] / f"{secure.BROKER_STEM}.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for name in BROKERS:
        props = broker_properties(env(svc[name]))
        (secrets_dir, volume), = [(t, v) for t, v in mounts(svc[name]).items()
                                  if v == "kafka-tls"]
        for key in ("ssl.keystore.location", "ssl.truststore.location"):
            location = Path(props[key])
            assert location.parent == Path(secrets_dir), key
            assert (volume_dir[volume] / location.name).is_file(), key
        assert Path(props["ssl.keystore.location"]).name == secure.KEYSTORE
        assert Path(props["ssl.truststore.location"]).name == ca_files(Path()).cert.name
        # every address a client is told to use is in the certificate (host names checked)
        for host, _ in listeners(props["advertised.listeners"]).values():
            if host[0].isdigit():
                assert host in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
            else:
                assert host in names.get_values_for_type(x509.DNSName)
    # the certificate's subject maps to the only super user
    rule = re.fullmatch(r"RULE:(.*)/(.*)/,DEFAULT", SECURE_BROKER["ssl.principal.mapping.rules"])
    assert rule is not None
    principal = re.sub(rule.group(1), rule.group(2).replace("$1", r"\1"),
                       cert.subject.rfc4514_string())
    assert f"User:{principal}" == SECURE_BROKER["super.users"] == f"User:{BROKER_USER}"


def test_every_client_is_a_user_the_init_step_creates() -> None:
    svc = stack_raw_services()
    users = scram_users(svc)
    assert sorted(users) == sorted(role.value for role in Role)
    setup_env = env(svc["secure-setup"])
    for variable in users.values():
        assert setup_env[variable] == f"${{{variable}:?make .env first (docs/deploy.md)}}"
    for name in CLIENTS:
        e = env(svc[name])
        user = e["TASKSTREAM_SASL_USERNAME"]
        assert user in users, name
        # the same .env variable that secure-setup gives that user
        assert e["TASKSTREAM_SASL_PASSWORD"].startswith(f"${{{users[user]}:?"), name
        assert e["TASKSTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
        ca = Path(e["TASKSTREAM_SSL_CA_FILE"])
        assert mounts(svc[name]).get(str(ca.parent)) == f"{user}-secrets", name
        if "TASKSTREAM_SIGNING_KEYRING_FILE" in e:
            keyring = Path(e["TASKSTREAM_SIGNING_KEYRING_FILE"])
            assert keyring == ca.parent / secure.SIGNING_KEYRING and user in ("processor",
                                                                             "worker")
    assert {env(svc[n])["TASKSTREAM_SASL_USERNAME"] for n in ("processor-0", "processor-1")} \
        == {"processor"}
    assert {env(svc[n])["TASKSTREAM_SASL_USERNAME"] for n in ("worker", "worker-dev")} \
        == {"worker"}
    # a worker never sees the processors' keyring, nor anyone the brokers' key
    for name in CLIENTS:
        assert "kafka-tls" not in mounts(svc[name]).values()
    assert "processor-secrets" not in mounts(svc["worker"]).values()


def test_the_acls_applied_are_those_of_acls_py() -> None:
    svc = services()
    lines = script_lines(svc["secure-setup"])
    (apply,) = [line for line in lines if line[:3] == ["taskstream", "acls", "apply"]]
    # no --principal, no --worker-queues: every role as User:<role>, workers on every queue
    assert apply == ["taskstream", "acls", "apply"]
    assert lines.index(apply) > 0 and lines[0][:3] == ["taskstream", "users", "set"]
    setup = settings_of(svc["secure-setup"])
    for name in CLIENTS:
        settings = settings_of(svc[name])
        assert settings.topic_prefix == setup.topic_prefix, name
        role = Role(settings.sasl_username)
        assert role_grants(settings, role) == role_grants(setup, role)
    assert setup.security_protocol == "SSL" and setup.ssl_cert_file is not None


def test_order_no_client_before_its_user_and_acls() -> None:
    svc = services()
    done = {"condition": "service_completed_successfully"}
    healthy = {"condition": "service_healthy"}
    for name in BROKERS:
        assert svc[name]["depends_on"]["secure-init"] == done
    assert svc["secure-setup"]["depends_on"] == {name: healthy for name in BROKERS}
    assert svc["topics"]["depends_on"]["secure-setup"] == done
    for name in ("processor-0", "processor-1", "worker", "worker-dev"):
        assert svc[name]["depends_on"]["topics"] == done
    for name in ("secure-init", "secure-setup", "topics"):
        assert svc[name]["restart"] == "no"


def test_published_ports_bind_the_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    for name in BROKERS:
        svc = services()[name]
        (published,) = svc["ports"]
        _, host_port, target = published.split(":")
        external = listeners(broker_properties(env(svc))["advertised.listeners"])["EXTERNAL"]
        assert external == ("127.0.0.1", int(host_port))
        assert listeners(broker_properties(env(svc))["listeners"])["EXTERNAL"][1] == int(target)


# -- with the broker jars: the stack's own commands against brokers started from it -----


@dataclass
class Here:
    """The stack laid out on this machine: each named volume a folder, each container's
    file system a folder whose mount points link to those volumes, and every broker
    address (service host and container port, or a published port) a free loopback port."""

    root: Path
    svc: dict[str, dict[str, Any]]
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    published: dict[int, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in BROKERS:
            for port in listeners(broker_properties(env(self.svc[name]))["listeners"]).values():
                self.ports[(name, port[1])] = free_port()
            for published in self.svc[name].get("ports", []):
                _, host_port, target = published.split(":")
                self.published[int(host_port)] = (name, int(target))

    def volume(self, name: str) -> Path:
        path = self.root / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fs(self, service: str) -> Path:
        """``service``'s file system: its mount points, linked to the volumes' folders."""
        top = self.root / "fs" / service
        for target, volume in mounts(self.svc[service]).items():
            link = top / target.lstrip("/")
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(self.volume(volume))
        return top

    def paths(self, text: str, service: str) -> str:
        """Absolute paths under ``service``'s mount points, moved into its folder."""
        tops = {"/" + target.split("/")[1] for target in mounts(self.svc[service])}
        fs = self.fs(service)
        for top in tops:
            text = re.sub(rf"(^|[\s=,'\"]){re.escape(top)}(?=/|$|[\s,'\"])",
                          lambda m, t=top: m.group(1) + str(fs) + t, text)
        return text

    def addresses(self, text: str, service: str | None) -> str:
        """``host:port`` of the stack (a broker's name, a published port, or the
        container itself) -> its loopback port here."""

        def one(match: re.Match[str]) -> str:
            host, port = match.group(2), int(match.group(3))
            if host in BROKERS:
                key = (host, port)
            elif host in ("127.0.0.1", "localhost") and port in self.published:
                key = self.published[port]
            else:
                assert service is not None and host in ("", "localhost"), match.group(0)
                key = (service, port)
            return f"{match.group(1)}127.0.0.1:{self.ports[key]}"

        return re.sub(r"(^|[,@ ]|//)([A-Za-z0-9.-]*):(\d+)", one, text)

    def environ(self, service: str, bin_dir: Path, **extra: str) -> dict[str, str]:
        """The process environment of ``service``'s container, here."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
        base["PATH"] = f"{bin_dir}{os.pathsep}{base['PATH']}"
        for key, value in env(self.svc[service]).items():
            value = self.paths(value, service)
            base[key] = self.addresses(value, None) if key == "TASKSTREAM_BOOTSTRAP" else value
        base.update(extra)
        return base


def _run(argv: list[str], environ: dict[str, str], timeout: float = 180,
         cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=environ, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{shlex.join(argv)[:500]}\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done


@dataclass
class Brokers:
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def _brokers(here: Here, java: str, classpath: str) -> Iterator[Brokers]:
    brokers = Brokers()
    formats = []
    for index, name in enumerate(BROKERS):
        props = broker_properties(env(here.svc[name]))
        props = {k: here.paths(v, name) for k, v in props.items()}
        for key in ("listeners", "advertised.listeners", "controller.quorum.voters"):
            props[key] = here.addresses(props[key], name)
        # the one property added here: 10 offsets partitions, not 50 (2 shared cores)
        props["offsets.topic.num.partitions"] = "10"
        node = NodeLayout(index + 1, 0, 0, here.root / "nodes" / name)
        node.dir.mkdir(parents=True)
        node.properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        node.log4j.write_text(log4j2_properties(node))
        cluster_id = env(here.svc[name])["CLUSTER_ID"]
        # what the image's start script runs: format (no SCRAM user), then the server
        formats.append(subprocess.Popen(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             f"--cluster-id={cluster_id}", "-c", str(node.properties)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for proc in formats:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out.decode()[-2000:]
    try:
        for index, name in enumerate(BROKERS):
            node = NodeLayout(index + 1, 0, 0, here.root / "nodes" / name)
            with open(node.stdout, "wb") as log:
                brokers.procs[name] = subprocess.Popen(
                    [java, "-Xmx512m", f"-Dlog4j2.configurationFile={node.log4j}", "-cp",
                     classpath, "kafka.Kafka", str(node.properties)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        yield brokers
    finally:
        brokers.stop()


def _healthy(here: Here, name: str, bin_dir: Path, brokers: Brokers) -> bool:
    """The service's own health check, run here (the tool is the same class)."""
    for broker, proc in brokers.procs.items():
        log = here.root / "nodes" / broker / "server.log"
        assert proc.poll() is None, f"{broker} exited:\n{log.read_text()[-3000:]}"
    test = here.svc[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = here.addresses(here.paths(test[3], name), name)
    script = script.replace("/tmp/health.properties", str(here.root / f"{name}-health"))
    script = script.replace("/opt/kafka/bin/", f"{bin_dir}/")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    return done.returncode == 0 and "ApiVersion" in done.stdout


def _tools(root: Path, java: str, classpath: str) -> Path:
    """A bin folder with ``taskstream`` and the image's health check tool."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "taskstream").symlink_to(Path(sys.executable).parent / "taskstream")
    tool = bin_dir / "kafka-broker-api-versions.sh"
    tool.write_text(f"#!/bin/sh\nexec {java} -Xmx128m -cp '{classpath}' "
                    "org.apache.kafka.tools.BrokerApiVersionsCommand \"$@\"\n")
    tool.chmod(0o755)
    return bin_dir


def _script(here: Here, service: str) -> str:
    (script,) = command(here.svc[service])
    return here.paths(script, service)


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, proc in reversed(procs):
        proc.terminate()
    for _, proc in reversed(procs):
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_stack_runs_its_own_commands_on_brokers_started_from_its_settings(
        tmp_path: Path) -> None:
    variables = dotenv()
    here = Here(tmp_path, services(variables))
    install = ensure_kafka(load_settings().kafka_home, load_settings().kafka_version)
    bin_dir = _tools(tmp_path, install.java, install.classpath)
    # chown is the container's business (uids of the images): here it only records
    (bin_dir / "chown").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'chowned'}\n")
    (bin_dir / "chown").chmod(0o755)

    init = _run(["sh", "-euc", _script(here, "secure-init")],
                here.environ("secure-init", bin_dir))
    assert "tls: made" in init.stdout and "keyrings: made" in init.stdout
    again = _run(["sh", "-euc", _script(here, "secure-init")],
                 here.environ("secure-init", bin_dir))
    assert "tls: kept" in again.stdout and "keyrings: kept" in again.stdout
    for line in (tmp_path / "chowned").read_text().splitlines():
        assert all(Path(p).is_dir() for p in line.split()[2:]), line

    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    with ExitStack() as stack:
        brokers = stack.enter_context(_brokers(here, install.java, install.classpath))
        stack.callback(_stop, procs)
        for name in BROKERS:
            wait_for(f"{name}'s health check", lambda n=name: _healthy(here, n, bin_dir, brokers),
                     timeout=300, interval=1.0)
        setup = _run(["sh", "-euc", _script(here, "secure-setup")],
                     here.environ("secure-setup", bin_dir, **variables))
        assert "SCRAM users set" in setup.stdout and "ACL bindings" in setup.stdout
        topics = _run(["taskstream", *command(here.svc["topics"])],
                      here.environ("topics", bin_dir))
        assert "created" in topics.stdout

        # the ACLs on the brokers are exactly acls.py's, for every role
        owner = load_settings(**{
            k[len("TASKSTREAM_"):].lower(): v
            for k, v in here.environ("secure-setup", bin_dir).items()
            if k.startswith("TASKSTREAM_")})
        admin = admin_client(owner)  # kept: a collected client fails its futures
        found = admin.client.describe_acls(
            AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                             AclOperation.ANY, AclPermissionType.ANY),
            request_timeout=30).result(timeout=60)
        wanted = [b for role in Role
                  for b in bindings(f"User:{role.value}", role_grants(owner, role))]
        assert sorted(map(str, found)) == sorted(map(str, wanted))

        web_port = free_port()
        api = f"http://127.0.0.1:{web_port}"
        local = {"TASKSTREAM_WEB_HOST": "127.0.0.1", "TASKSTREAM_WEB_PORT": str(web_port),
                 "TASKSTREAM_API_URL": api, "TASKSTREAM_ADVERTISED_URL": api,
                 "TASKSTREAM_DATA_DIR": str(tmp_path / "processor-data"),
                 "TASKSTREAM_STANDBY_REPLICAS": "0"}
        for service in ("processor-0", "worker"):
            argv = command(here.svc[service])
            if "--metrics-port" in argv:
                argv[argv.index("--metrics-port") + 1] = str(free_port())
            with open(tmp_path / f"{service}.log", "wb") as log:
                procs.append((service, subprocess.Popen(
                    ["taskstream", *argv], env=here.environ(service, bin_dir, **local),
                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))

        def ready() -> bool:
            for service, proc in procs:
                assert proc.poll() is None, (tmp_path / f"{service}.log").read_text()[-3000:]
            try:
                return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the secured processor to be ready", ready, timeout=240, interval=0.5)
        # the host: the submitter over the published port, with the CA from a volume
        host = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
        host.update(TASKSTREAM_BOOTSTRAP=here.addresses("127.0.0.1:19092", None),
                    TASKSTREAM_SECURITY_PROTOCOL="SASL_SSL",
                    TASKSTREAM_SASL_USERNAME="submitter",
                    TASKSTREAM_SASL_PASSWORD=variables["SCRAM_SUBMITTER_PASSWORD"],
                    TASKSTREAM_SSL_CA_FILE=str(here.volume("admin-secrets") / "ca.pem"),
                    TASKSTREAM_API_URL=api)
        submit = _run([str(bin_dir / "taskstream"), "submit", "examples.noop", "--payload",
                       "{}"], host)
        task_id = submit.stdout.split()[-1]
        waited = _run([str(bin_dir / "taskstream"), "wait", task_id, "--timeout", "180",
                       "--json"], host, timeout=240)
        assert json.loads(waited.stdout)["status"] == "SUCCEEDED"
