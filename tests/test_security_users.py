"""SCRAM users through the Admin API (``taskstream users set``, D41) and the security
material of a deployed cluster (``taskstream kafka secrets``).

Given the secured broker, the admin role creates a user and that user then gets in with
its password; a submitter may not create users and is told who may. Without a broker:
short passwords and malformed arguments are refused before anything is sent, and a
second ``kafka secrets`` keeps what the first made.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskstream.acls import Role
from taskstream.admin import list_topics
from taskstream.cli.main import main
from taskstream.errors import ConfigError, KafkaAuthError, LocalKafkaError
from taskstream.localkafka import secure
from taskstream.localkafka.certs import dns_names
from taskstream.security.keyring import parse_keyring
from taskstream.settings import load_settings
from taskstream.users import MIN_PASSWORD_LENGTH, check_password, set_scram_users
from tests.conftest import Roles


def test_a_short_password_is_refused_naming_the_user() -> None:
    with pytest.raises(ConfigError, match=r"'worker' has 5 characters.*at least 16"):
        check_password("worker", "short")
    check_password("worker", "x" * MIN_PASSWORD_LENGTH)


def test_users_set_reads_passwords_from_the_environment_only() -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["users", "set", "worker"])
    assert bad.exit_code == 2 and "use USER=ENV_VAR" in bad.output
    unset = runner.invoke(main, ["users", "set", "worker=NO_SUCH_VARIABLE_HERE"], env={})
    assert unset.exit_code == 2 and "NO_SUCH_VARIABLE_HERE" in unset.output
    short = runner.invoke(main, ["users", "set", "worker=PW"], env={"PW": "short"})
    assert short.exit_code == 1 and "at least 16" in short.output


def test_kafka_secrets_makes_one_folder_per_reader_and_keeps_it(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["kafka", "secrets", "--out", str(tmp_path), "--host", "kafka-1",
                                 "--host", "kafka-2"])
    assert first.exit_code == 0 and "tls: made" in first.output, first.output
    broker = tmp_path / secure.BROKERS_DIR / f"{secure.BROKER_STEM}.pem"
    assert {"kafka-1", "kafka-2", "localhost"} <= set(dns_names(broker))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = runner.invoke(main, ["kafka", "secrets", "--out", str(tmp_path), "--host", "kafka-1"])
    assert second.exit_code == 0 and "tls: kept" in second.output and "keyrings: kept" in \
        second.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # the keyrings belong together: the processor verifies what the worker signs
    rings = {name: json.loads((tmp_path / name / secure.SIGNING_KEYRING).read_text())
             for name in secure.KEYRING_READERS}
    worker_kid = rings["worker"]["current"]
    assert rings["processor"]["keys"][worker_kid] == rings["worker"]["keys"][worker_kid]
    assert rings["admin"]["current"] is None
    for name in secure.KEYRING_READERS:
        parse_keyring((tmp_path / name / secure.SIGNING_KEYRING).read_text(), "signing", name)
        assert (tmp_path / name / "ca.pem").read_bytes() == \
            (tmp_path / secure.BROKERS_DIR / "ca.pem").read_bytes()
        assert (tmp_path / name / secure.SIGNING_KEYRING).stat().st_mode & 0o077 == 0
    with pytest.raises(LocalKafkaError, match="does not name kafka-9"):
        secure.deploy_files(tmp_path, ("kafka-9",))


def test_the_admin_creates_a_user_who_then_gets_in(secure_roles: Roles) -> None:
    user, password = f"svc-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    assert set_scram_users(secure_roles(Role.ADMIN), {user: password}) == [user]
    newcomer = load_settings(**{**secure_roles(Role.SUBMITTER).model_dump(),
                                "sasl_username": user, "sasl_password": password})
    list_topics(newcomer)  # authenticated (it may see no topic: it holds no ACL)
    wrong = load_settings(**{**newcomer.model_dump(), "sasl_password": password + "x",
                             "kafka_timeout_s": 5})
    with pytest.raises(KafkaAuthError):
        list_topics(wrong)


def test_a_submitter_may_not_create_users(secure_roles: Roles) -> None:
    with pytest.raises(KafkaAuthError, match="may alter the cluster"):
        set_scram_users(secure_roles(Role.SUBMITTER), {"intruder": secrets.token_urlsafe(24)})
