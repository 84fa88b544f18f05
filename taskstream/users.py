"""SCRAM users on the brokers, created or changed through the Admin API (D41).

A client on a SASL_SSL listener authenticates as a SCRAM-SHA-512 user (D25). On a
cluster that is already running, users are made the way a shared cluster is
provisioned: ``AlterUserScramCredentials`` (KIP-554; KRaft keeps the credential in
the cluster metadata), sent by a principal allowed to alter the cluster (a super
user, or the admin role). Only the salted hash travels to the brokers' metadata;
the password itself stays in the process that sends it. An upsert replaces an
existing credential, so the same call creates the users and rotates a password.

``taskstream users set`` runs this for the compose stack's init step
(docker-compose.secure.yml); ``kafka up --secure`` instead gives its users to
``kafka-storage format`` (D25), since its brokers authenticate to each other with
a SCRAM user that must exist before the first one starts.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin._scram import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from taskstream.admin import admin_client, cluster_metadata
from taskstream.errors import ConfigError, KafkaAuthError
from taskstream.settings import Settings

#: the one SASL mechanism of a secured cluster: the brokers enable it, every client uses it
MECHANISM = "SCRAM-SHA-512"
#: PBKDF2 rounds of the stored credential (Kafka's minimum and the storage tool's default)
ITERATIONS = 4096
#: a shorter password is refused: these are machine credentials, generate them
MIN_PASSWORD_LENGTH = 16


def check_password(user: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"the password of SCRAM user {user!r} has {len(password)} characters; use at least "
            f"{MIN_PASSWORD_LENGTH} (generate one: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')")


def set_scram_users(settings: Settings, passwords: Mapping[str, str]) -> list[str]:
    """Create or replace each user's SCRAM-SHA-512 credential. Returns the users set.

    ``settings`` must name a principal allowed to alter the cluster."""
    for user, password in passwords.items():
        check_password(user, password)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS)
    alterations: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, password.encode())
        for user, password in passwords.items()]
    admin = admin_client(settings)
    cluster_metadata(settings, admin)  # unreachable or refused: say so plainly first
    futures = admin.client.alter_user_scram_credentials(
        alterations, request_timeout=settings.kafka_timeout_s)
    for user, future in futures.items():
        try:
            future.result(timeout=settings.kafka_timeout_s * 2)
        except KafkaException as exc:
            raise KafkaAuthError(
                f"could not set the SCRAM credential of {user!r}: {exc.args[0]}; run this "
                "as a principal that may alter the cluster (a super user, or the admin "
                "role)") from None
    return sorted(futures)
