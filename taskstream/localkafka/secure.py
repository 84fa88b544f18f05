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
from taskstream.localkafka.certs import make_ca, make_leaf
from taskstream.localkafka.config import BROKER_USER, BrokerSecurity
from taskstream.security.keyring import keyring_json, new_secret
from taskstream.settings import Settings, load_settings

SECURITY_DIR = "security"
MECHANISM = "SCRAM-SHA-512"
ROLES = tuple(Role)
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
    keystore = tls / "broker-keystore.pem"
    if users_file.exists() and keystore.exists():
        try:
            passwords = json.loads(users_file.read_text())
        except ValueError as exc:
            raise LocalKafkaError(f"{users_file} is damaged ({exc}); remove the cluster with "
                                  "`taskstream kafka down` and start a new one") from None
        return SecureFiles(root, tls / "ca.pem", keystore, passwords)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = make_ca(tls)
    broker = make_leaf(ca, tls, "broker", BROKER_USER)
    _write_secret(keystore, broker.key.read_text() + broker.cert.read_text())
    passwords = {user: secrets.token_urlsafe(24)
                 for user in (BROKER_USER, *(r.value for r in ROLES))}
    _write_secret(users_file, json.dumps(passwords, indent=2))
    files = SecureFiles(root, ca.cert, keystore, passwords)
    _write_keyrings(files)
    return files


def _write_keyrings(files: SecureFiles) -> None:
    processor = {"role": "processor", "key": new_secret()}
    worker = {"role": "worker", "key": new_secret()}
    both = {PROCESSOR_KEY_ID: processor, WORKER_KEY_ID: worker}
    _write_secret(files.keyring("processor"), keyring_json(both, PROCESSOR_KEY_ID))
    _write_secret(files.keyring("worker"), keyring_json({WORKER_KEY_ID: worker}, WORKER_KEY_ID))
    _write_secret(files.keyring("admin"), keyring_json(both, None))


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

