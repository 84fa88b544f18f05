"""What ``taskstream kafka up --secure`` makes and hands out (D25).

Under ``<data-dir>/security/`` (mode 0700, every secret file 0600):

* ``tls/``: a CA and the brokers' certificate (:mod:`~taskstream.localkafka.certs`),
  and ``broker-keystore.pem`` (the key and the chain in one file: Kafka's PEM key store);
* ``users.json``: one SCRAM-SHA-512 user per role (submitter, processor, worker,
  admin) and ``broker``, the brokers' own (the only super user), each with a
  random password. The credentials are given to ``kafka-storage format
  --add-scram`` (KRaft keeps SCRAM credentials in the cluster metadata; the
  storage tool writes them into the bootstrap checkpoint, so they exist before
  the first broker starts: checked on Kafka 4.3.1);
* ``keys/``: the event signing keyrings (D26): ``processor.json`` (signs with the
  processor key, verifies worker and processor keys), ``worker.json`` (signs
  with the worker key), ``admin.json`` (verifies both, for replay);
* ``<role>.toml``: the settings of each role, to use with
  ``TASKSTREAM_CONFIG=<data-dir>/security/<role>.toml``.

A kept cluster (``down --keep``) is resumed with the same files. The passwords
pass once through the storage tool's command line while it formats: fine on a
developer's machine, not how a shared cluster is provisioned (docs/security.md).

:func:`deploy_files` (``taskstream kafka secrets``) makes the same CA, brokers'
certificate and keyrings for a cluster that runs elsewhere (the compose stack's
init step, docker-compose.secure.yml, D41): the certificate also names the
brokers' host names, and each reader gets a folder of its own. It makes no
passwords: those come from the deployment's secrets and go to the brokers with
``taskstream users set`` (:mod:`taskstream.users`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskstream.acls import Role, apply_acls
from taskstream.errors import LocalKafkaError
from taskstream.localkafka.certs import LOCAL_NAMES, ca_files, dns_names, make_ca, make_leaf
from taskstream.localkafka.config import BROKER_USER, BrokerSecurity
from taskstream.security.keyring import keyring_json, new_secret
from taskstream.settings import Settings, load_settings
from taskstream.users import MECHANISM

SECURITY_DIR = "security"
ROLES = tuple(Role)
#: the brokers' certificate and key: ``broker.pem``, ``broker.key``
BROKER_STEM = "broker"
#: the key store file: the brokers' key and certificate chain in one PEM (Kafka's PEM store)
KEYSTORE = "broker-keystore.pem"
#: the keyrings of the roles that sign or verify events (D26): each file's name and reader
KEYRING_READERS = ("processor", "worker", "admin")
PROCESSOR_KEY_ID = "processor-1"
WORKER_KEY_ID = "worker-1"


@dataclass(frozen=True)
class SecureFiles:
    """A secured cluster's security material."""

    dir: Path
    ca: Path
    keystore: Path
    passwords: dict[str, str]  # user -> password (the roles and ``broker``)

    @property
    def broker(self) -> BrokerSecurity:
        return BrokerSecurity(self.keystore, self.ca, self.passwords[BROKER_USER])

    def role_config(self, role: Role) -> Path:
        return self.dir / f"{role.value}.toml"

    def keyring(self, name: str) -> Path:
        return self.dir / "keys" / f"{name}.json"


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def prepare(data_dir: Path) -> SecureFiles:
    """The cluster's security material, made now unless ``data_dir`` already holds it."""
    root = data_dir / SECURITY_DIR
    tls = root / "tls"
    users_file = root / "users.json"
    keystore = tls / KEYSTORE
    if users_file.exists() and keystore.exists():
        try:
            passwords = json.loads(users_file.read_text())
        except ValueError as exc:
            raise LocalKafkaError(f"{users_file} is damaged ({exc}); remove the cluster with "
                                  "`taskstream kafka down` and start a new one") from None
        return SecureFiles(root, tls / "ca.pem", keystore, passwords)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = make_tls(tls)
    passwords = {user: secrets.token_urlsafe(24)
                 for user in (BROKER_USER, *(r.value for r in ROLES))}
    _write_secret(users_file, json.dumps(passwords, indent=2))
    files = SecureFiles(root, ca, keystore, passwords)
    for name, text in role_keyrings().items():
        _write_secret(files.keyring(name), text)
    return files


def make_tls(tls: Path, names: tuple[str, ...] = LOCAL_NAMES) -> Path:
    """A new CA and the brokers' certificate (CN ``broker``: the principal ``User:broker``)
    for the DNS ``names`` and the loopback addresses, with the key store beside them
    (:data:`KEYSTORE`). Returns the CA certificate's path."""
    ca = make_ca(tls)
    broker = make_leaf(ca, tls, BROKER_STEM, BROKER_USER, names)
    _write_secret(tls / KEYSTORE, broker.key.read_text() + broker.cert.read_text())
    return ca.cert


def role_keyrings() -> dict[str, str]:
    """New signing keyrings (JSON) of :data:`KEYRING_READERS` (D26): the processor's signs
    with its key and verifies both roles', the worker's signs with its own, the admin's
    (replay) verifies both."""
    processor = {"role": "processor", "key": new_secret()}
    worker = {"role": "worker", "key": new_secret()}
    both = {PROCESSOR_KEY_ID: processor, WORKER_KEY_ID: worker}
    return {"processor": keyring_json(both, PROCESSOR_KEY_ID),
            "worker": keyring_json({WORKER_KEY_ID: worker}, WORKER_KEY_ID),
            "admin": keyring_json(both, None)}


#: where :func:`deploy_files` puts each reader's files, under its output folder
BROKERS_DIR = "kafka"
SIGNING_KEYRING = "signing.json"


def deploy_files(out: Path, hosts: tuple[str, ...]) -> dict[str, bool]:
    """The security material of a cluster deployed elsewhere, one folder per reader
    (each becomes a volume or a Secret of its own), made where missing:

    * ``kafka/``: the CA (``ca.pem``, ``ca.key``) and the brokers' certificate for
      ``hosts`` (``broker.pem``, ``broker.key``, and :data:`KEYSTORE`). The brokers
      read it, and so may the one-off step that acts as their principal (it sets up
      users and ACLs as the super user, over mutual TLS);
    * ``processor/``, ``worker/``, ``admin/``: the CA certificate and that role's
      signing keyring (:data:`SIGNING_KEYRING`).

    Existing material is kept (a second run changes nothing); the CA certificate is
    copied to every reader again. Returns what was made: ``{"tls": ..., "keyrings": ...}``.
    """
    tls = out / BROKERS_DIR
    made_tls = not (tls / KEYSTORE).exists()
    if made_tls:
        make_tls(tls, (*hosts, *LOCAL_NAMES))
    missing = set(hosts) - set(dns_names(tls / f"{BROKER_STEM}.pem"))
    if missing:
        raise LocalKafkaError(f"the brokers' certificate in {tls} does not name "
                              f"{', '.join(sorted(missing))}; remove that folder to make a "
                              "new CA and certificate (every client then needs the new ca.pem)")
    ca = ca_files(tls).cert
    keyrings = [out / name / SIGNING_KEYRING for name in KEYRING_READERS]
    made_keyrings = not all(path.exists() for path in keyrings)
    if made_keyrings:  # the three belong together: make them all anew
        for name, text in role_keyrings().items():
            _write_secret(out / name / SIGNING_KEYRING, text)
    for name in KEYRING_READERS:
        (out / name / ca.name).write_bytes(ca.read_bytes())
    return {"tls": made_tls, "keyrings": made_keyrings}


def scram_arguments(files: SecureFiles) -> list[str]:
    """``--add-scram`` arguments of ``kafka-storage format`` for every user."""
    args = []
    for user, password in files.passwords.items():
        args += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
    return args


def role_overrides(files: SecureFiles, user: str, bootstrap: str, topic_prefix: str
                   ) -> dict[str, Any]:
    """The settings a client of ``user`` needs on this cluster."""
    return {
        "bootstrap": bootstrap,
        "topic_prefix": topic_prefix,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": MECHANISM,
        "sasl_username": user,
        "sasl_password": files.passwords[user],
        "ssl_ca_file": str(files.ca),
    }


def _toml(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def write_role_configs(files: SecureFiles, bootstrap: str, topic_prefix: str) -> None:
    """One TOML settings file per role (``TASKSTREAM_CONFIG``)."""
    for role in ROLES:
        values = role_overrides(files, role.value, bootstrap, topic_prefix)
        if role is not Role.SUBMITTER:
            values["signing_keyring_file"] = str(files.keyring(role.value))
        _write_secret(files.role_config(role), _toml(values))


def owner_settings(settings: Settings, files: SecureFiles, bootstrap: str) -> Settings:
    """Settings of the brokers' own principal (the super user): what sets up the ACLs."""
    return load_settings(kafka_timeout_s=settings.kafka_timeout_s,
                         **role_overrides(files, BROKER_USER, bootstrap, settings.topic_prefix))


def set_up_acls(settings: Settings, files: SecureFiles, bootstrap: str) -> int:
    """Every role's ACLs under ``settings.topic_prefix``, created as the super user."""
    owner = owner_settings(settings, files, bootstrap)
    return apply_acls(owner, {role: f"User:{role.value}" for role in ROLES})

