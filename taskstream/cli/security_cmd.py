"""``taskstream acls`` (least-privilege ACLs per role), ``taskstream users`` (SCRAM users)
and ``taskstream keys`` (keyrings).

``acls apply`` creates, under the topic prefix of the settings, the ACLs of each
role for the principal named with ``--principal role=User:name`` (default:
``User:<role>``, the users of ``kafka up --secure``); it must run as a principal
allowed to alter ACLs. ``acls show`` prints what a role is granted. ``users set``
creates or changes SCRAM users through the Admin API, each password read from an
environment variable (D41). ``keys new`` makes a key and adds it to a keyring file
(created 0600 when missing), optionally as the current one: the rotation step
(docs/security.md, D25-D27).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from taskstream.cli.common import echo_json, exits_on_error, json_option, load_settings_or_exit


@click.group()
def acls() -> None:
    """Least-privilege ACLs per role (submitter, processor, worker, admin)."""


@acls.command()
@click.option("--principal", "principals", multiple=True, metavar="ROLE=PRINCIPAL",
              help="e.g. worker=User:images-worker (repeatable) [default: every role as "
                   "User:<role>]")
@click.option("--worker-queues", help="narrow the worker grants to these queues (a,b)")
@exits_on_error
def apply(principals: tuple[str, ...], worker_queues: str | None) -> None:
    """Create the ACLs of each role under the topic prefix (idempotent)."""
    from taskstream.acls import Role, apply_acls

    settings = load_settings_or_exit()
    chosen: dict[Role, str] = {}
    for item in principals:
        role, sep, principal = item.partition("=")
        if not sep or role not in {r.value for r in Role} or not principal.startswith("User:"):
            raise click.BadParameter(
                f"{item!r}: use ROLE=User:<name> with a role of submitter, processor, worker, "
                "admin", param_hint="--principal")
        chosen[Role(role)] = principal
    if not chosen:
        chosen = {role: f"User:{role.value}" for role in Role}
    queues = [q.strip() for q in worker_queues.split(",") if q.strip()] if worker_queues else None
    count = apply_acls(settings, chosen, queues)
    click.echo(f"{count} ACL bindings under prefix {settings.topic_prefix!r} for "
               + ", ".join(f"{r.value}={p}" for r, p in chosen.items()))


@acls.command()
@click.argument("role", type=click.Choice(["submitter", "processor", "worker", "admin"]))
@json_option
def show(role: str, as_json: bool) -> None:
    """Print what ROLE is granted under the topic prefix."""
    from taskstream.acls import Role, role_grants

    grants = role_grants(load_settings_or_exit(), Role(role))
    rows = [{"resource": g.kind.value, "name": g.name,
             "pattern": "prefixed" if g.prefixed else "literal",
             "operations": [op.name for op in g.operations]} for g in grants]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['resource']:<8} {row['pattern']:<9} {row['name']:<40} "
                   f"{','.join(row['operations'])}")


@click.group()
def users() -> None:
    """SCRAM users of the brokers (each role's principal on a SASL_SSL cluster)."""


@users.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="USER=ENV_VAR...")
@exits_on_error
def set_users(pairs: tuple[str, ...]) -> None:
    """Create or change each USER's SCRAM-SHA-512 credential (idempotent), its password
    read from the environment variable ENV_VAR: a password never goes on a command line.
    Run it as a principal that may alter the cluster (a super user or the admin role)."""
    from taskstream.users import set_scram_users

    passwords: dict[str, str] = {}
    for item in pairs:
        user, sep, variable = item.partition("=")
        if not sep or not user or not variable:
            raise click.BadParameter(f"{item!r}: use USER=ENV_VAR, e.g. "
                                     "worker=SCRAM_WORKER_PASSWORD", param_hint="USER=ENV_VAR")
        value = os.environ.get(variable)
        if not value:
            raise click.BadParameter(f"the environment variable {variable} (the password of "
                                     f"{user!r}) is not set", param_hint="USER=ENV_VAR")
        passwords[user] = value
    settings = load_settings_or_exit()
    done = set_scram_users(settings, passwords)
    click.echo(f"SCRAM users set on {settings.bootstrap}: {', '.join(done)}")


@click.group()
def keys() -> None:
    """Keyrings: event signing keys (by role) and payload encryption keys."""


@keys.command("new")
@click.argument("purpose", type=click.Choice(["payload", "worker", "processor"]))
@click.option("--kid", required=True, help="the new key's ID (1-32 letters, digits, _ . -)")
@click.option("--keyring", "path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="the keyring file to add the key to (created when missing)")
@click.option("--current", is_flag=True, help="make it the key new writes use")
@exits_on_error
def new(purpose: str, kid: str, path: Path, current: bool) -> None:
    """Add a fresh key to a keyring file: PURPOSE payload (sealing) or a signing role."""
    from taskstream.security.keyring import (
        KEY_ID,
        Purpose,
        keyring_json,
        new_secret,
        parse_keyring,
    )

    if not KEY_ID.match(kid):
        raise click.BadParameter("1-32 letters, digits, '_', '.' or '-'", param_hint="--kid")
    kind: Purpose = "payload" if purpose == "payload" else "signing"
    data = json.loads(path.read_text()) if path.exists() else {"current": None, "keys": {}}
    parse_keyring(json.dumps(data), kind, str(path))  # the file is a keyring of that kind
    if kid in data["keys"]:
        raise click.BadParameter(f"{path} already holds a key {kid!r}", param_hint="--kid")
    secret = new_secret()
    data["keys"][kid] = secret if kind == "payload" else {"role": purpose, "key": secret}
    text = keyring_json(data["keys"], kid if current else data.get("current"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    click.echo(f"added {purpose} key {kid!r} to {path}" + (" (current)" if current else ""))
