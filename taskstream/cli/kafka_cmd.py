"""``taskstream kafka`` (a local broker) and ``taskstream topics`` (the platform's topics)."""

from __future__ import annotations

from pathlib import Path

import click

from taskstream.cli.common import echo_json, exits_on_error, json_option, load_settings_or_exit

_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path),
    help="where the broker keeps its state [default: <kafka_home>/run]")


@click.group()
def kafka() -> None:
    """Run Apache Kafka locally (KRaft, no Docker needed; Java 17 and Maven)."""


@kafka.command()
@exits_on_error
def install() -> None:
    """Resolve the Kafka jars with Maven into the cache now (``up`` does it when needed)."""
    from taskstream.localkafka.install import ensure_kafka

    settings = load_settings_or_exit()
    found = ensure_kafka(settings.kafka_home, settings.kafka_version, show_progress=True)
    click.echo(f"Kafka {found.version} jars are in {found.libs}")


@kafka.command()
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="1 broker, or 3 replicating brokers for fault tests")
@click.option("--port", type=click.IntRange(1, 65535),
              help="client port of the first node [default: the port of settings.bootstrap]")
@_data_dir_option
@click.option("--timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="seconds to wait for the cluster to answer")
@click.option("--secure", is_flag=True,
              help="SASL_SSL (SCRAM-SHA-512) with a generated CA, one user per role and "
                   "least-privilege ACLs; writes <data-dir>/security/<role>.toml")
@exits_on_error
def up(nodes: str, port: int | None, data_dir: Path | None, timeout: float,
       secure: bool) -> None:
    """Start a local Kafka cluster and wait until it answers."""
    from taskstream.localkafka import cluster as localkafka

    settings = load_settings_or_exit()
    result = localkafka.up(settings, nodes=int(nodes), port=port, data_dir=data_dir,
                           timeout=timeout, show_progress=True, secure=secure)
    cluster = result.cluster
    if result.already_running:
        click.echo(f"Kafka is already running at {cluster.bootstrap} (data in {cluster.data_dir})")
    else:
        pids = ", ".join(str(n.pid) for n in cluster.nodes)
        click.echo(f"Kafka {cluster.version} is up at {cluster.bootstrap} (PIDs {pids}); "
                   f"data and logs in {cluster.data_dir}")
    where = cluster.security_dir
    if where is None:
        if not result.already_running:
            click.echo(f"Use it with: export TASKSTREAM_BOOTSTRAP={cluster.bootstrap}")
        return
    click.echo("Secured: SASL_SSL with SCRAM-SHA-512, one user per role, ACLs under the topic "
               f"prefix {settings.topic_prefix!r} (docs/security.md). Settings of each role:")
    for role in ("admin", "processor", "worker", "submitter"):
        click.echo(f"  {role:<10} export TASKSTREAM_CONFIG={where / (role + '.toml')}")


@kafka.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="the folder to write into: kafka/, processor/, worker/, admin/")
@click.option("--host", "hosts", multiple=True, required=True,
              help="a host name the brokers are reached at (repeatable)")
@exits_on_error
def secrets(out: Path, hosts: tuple[str, ...]) -> None:
    """Make a deployed cluster's CA, brokers' certificate and signing keyrings (kept if
    there): one folder per reader (docker-compose.secure.yml, docs/deploy.md)."""
    from taskstream.localkafka.secure import deploy_files

    made = deploy_files(out, hosts)
    for what, fresh in made.items():
        click.echo(f"{what}: {'made' if fresh else 'kept'} ({out})")


@kafka.command()
@_data_dir_option
@json_option
@exits_on_error
def status(data_dir: Path | None, as_json: bool) -> None:
    """Say whether the local cluster runs and answers; list its topics. Exit 1 if it is down."""
    from taskstream.localkafka import cluster as localkafka

    settings = load_settings_or_exit()
    report = localkafka.status(data_dir or localkafka.default_data_dir(settings))
    if as_json:
        echo_json({
            "cluster": report.cluster.to_json() if report.cluster else None,
            "alive": {str(k): v for k, v in report.alive.items()},
            "answering": report.answering, "topics": list(report.topics),
        })
    elif report.cluster is None:
        click.echo("No local Kafka recorded there; start one with `taskstream kafka up`.")
    else:
        click.echo(f"Kafka {report.cluster.version} at {report.cluster.bootstrap} "
                   f"(data in {report.cluster.data_dir})")
        for node in report.cluster.nodes:
            state = "running" if report.alive[node.node_id] else "not running"
            click.echo(f"  node {node.node_id}: PID {node.pid} {state}, port {node.port}, "
                       f"log {node.log}")
        click.echo("answers metadata requests" if report.answering else "does NOT answer")
        click.echo(f"topics ({len(report.topics)}):")
        for name in report.topics:
            click.echo(f"  {name}")
    if not report.answering:
        raise SystemExit(1)


@kafka.command()
@_data_dir_option
@click.option("--keep", is_flag=True, help="keep the data so the next `up` resumes it")
@click.option("--timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              help="seconds to wait after SIGTERM before SIGKILL")
@exits_on_error
def down(data_dir: Path | None, keep: bool, timeout: float) -> None:
    """Stop the brokers `up` started (only those PIDs); delete their data unless --keep."""
    from taskstream.localkafka import cluster as localkafka

    settings = load_settings_or_exit()
    where = data_dir or localkafka.default_data_dir(settings)
    stopped = localkafka.down(where, keep=keep, timeout=timeout)
    if stopped is None:
        click.echo(f"No local Kafka recorded in {where}; nothing to stop.")
        return
    what = f"stopped PIDs {', '.join(map(str, stopped))}" if stopped else "nothing was running"
    click.echo(f"Kafka: {what}; data {'kept' if keep else 'removed'} ({where})")


@click.group()
def topics() -> None:
    """Create and list the platform's topics."""


@topics.command()
@click.option("--prefix", help="topic name prefix [default: settings.topic_prefix]")
@click.option("--partitions", type=click.IntRange(1, 10_000),
              help="partitions of task-keyed topics")
@click.option("--replication", type=click.IntRange(1, 16), help="replication factor")
@click.option("--retention-ms", type=click.IntRange(-1), help="events topic retention")
@click.option("--queues", help="comma-separated queues [default: settings.queues]")
@exits_on_error
def create(prefix: str | None, partitions: int | None, replication: int | None,
           retention_ms: int | None, queues: str | None) -> None:
    """Create the platform's topics; existing ones are left as they are."""
    from taskstream.queue_registry import set_up_platform

    overrides: dict[str, object] = {
        "topic_prefix": prefix, "partitions": partitions, "replication": replication,
        "events_retention_ms": retention_ms,
        "queues": [q.strip() for q in queues.split(",") if q.strip()] if queues else None,
    }
    settings = load_settings_or_exit(**{k: v for k, v in overrides.items() if v is not None})
    result, registered = set_up_platform(settings)
    for name, created in result.items():
        click.echo(f"{name}: {'created' if created else 'already exists'}")
    click.echo(f"registered queues: {', '.join(registered)}")
    if not any(result.values()):
        click.echo(f"All {len(result)} topics already exist; nothing to do.")


@topics.command("list")
@click.option("--all", "show_all", is_flag=True, help="every topic, not only those with the prefix")
@json_option
@exits_on_error
def list_(show_all: bool, as_json: bool) -> None:
    """List the platform's topics (those with the topic prefix) with partition counts."""
    from taskstream.admin import list_topics

    settings = load_settings_or_exit()
    found = {name: n for name, n in list_topics(settings).items()
             if show_all or name.startswith(settings.topic_prefix)}
    if as_json:
        echo_json(found)
        return
    for name in sorted(found):
        click.echo(f"{name}  ({found[name]} partitions)")
