"""``taskstream chaos``: the seeded fault-injection harness (D42, docs/chaos.md)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

_KINDS_HELP = ("fault kinds, comma-separated, or all / none: broker-kill, replica-kill, "
               "replica-zombie, replica-wipe, worker-kill, rebalance-storm, clock-skew, "
               "producer-dup")


@click.group()
def chaos() -> None:
    """Inject faults under a steady workload and check the platform's promises."""


@chaos.command("run")
@click.pass_context
@click.option("--seed", default=1, show_default=True, type=int,
              help="the same seed gives the same workload mix and fault plan")
@click.option("--faults", "kinds", default="all", show_default=True, help=_KINDS_HELP)
@click.option("--count", default=36, show_default=True, type=click.IntRange(0, 10_000),
              help="faults to inject")
@click.option("--gap", default=33.0, show_default=True, type=click.FloatRange(1, 3600),
              help="seconds between planned faults")
@click.option("--duration", default=0.0, show_default=True, type=click.FloatRange(0, 86_400),
              help="run the workload at least this many seconds")
@click.option("--rate", default=10.0, show_default=True, type=click.FloatRange(0.1, 10_000),
              help="tasks submitted per second")
@click.option("--replicas", default=3, show_default=True, type=click.IntRange(1, 5),
              help="processor replicas (local run)")
@click.option("--workers", default=3, show_default=True, type=click.IntRange(1, 20),
              help="chaos workers")
@click.option("--bootstrap", default=None, metavar="HOST:PORT",
              help="run against this deployment instead of a local cluster (see below)")
@click.option("--workdir", default=Path(".taskstream/chaos"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="where the run keeps its Kafka, replicas, logs, ledger and runs file")
@click.option("--out", "out_dir", default=Path("bench/results/chaos"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="where the report goes (<stamp>.json and <stamp>.md)")
@click.option("--drain-timeout", default=240.0, show_default=True,
              type=click.FloatRange(1, 3600),
              help="seconds to wait, after the faults, for every task to finish")
def run(ctx: click.Context, seed: int, kinds: str, count: int, gap: float, duration: float,
        rate: float, replicas: int, workers: int, bootstrap: str | None, workdir: Path,
        out_dir: Path, drain_timeout: float) -> None:
    """Run a workload, inject a seeded plan of faults, check the invariants, report.

    Without --bootstrap the run is local: it starts 3 Kafka nodes (replication 3, min
    ISR 2), the processor replicas and the workers itself, on free ports, and stops them
    at the end. Every fault kind can be injected.

    With --bootstrap HOST:PORT it runs against your own deployment (the other settings,
    topic prefix and credentials included, come from the environment and the config
    file, as for every command). It starts only its own workers, on the `chaos` queue
    (registered if missing), and its own producers, so it injects only the faults it
    can there: worker-kill, rebalance-storm, clock-skew and producer-dup. Faults on
    brokers and processor replicas are reported as not run. The workload, the ledger
    and every invariant are the same.

    Invariants: 0 lost (every acknowledged task terminal), 0 double-accepted
    completions, every extra handler run attributed to a fault, `replay verify` clean,
    the concurrency key's limit never exceeded. Exit code 1 when one is broken.
    """
    from taskstream.chaos.errors import ChaosError
    from taskstream.chaos.run import Options, run_chaos
    from taskstream.chaos.schedule import parse_kinds
    from taskstream.cli.common import load_settings_or_exit
    from taskstream.errors import TaskstreamError

    if bootstrap and ctx.get_parameter_source("replicas") is not ParameterSource.DEFAULT:
        raise click.BadParameter("a run against a deployment uses its replicas; it starts none",
                                 param_hint="--replicas")
    try:
        selected = parse_kinds(kinds)
    except ChaosError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    settings = load_settings_or_exit()
    if bootstrap:
        settings = settings.model_copy(update={"bootstrap": bootstrap})
    options = Options(seed=seed, kinds=selected, faults=count, gap_s=gap,
                      min_duration_s=duration, rate=rate, replicas=replicas, workers=workers,
                      local=bootstrap is None, workdir=workdir, out_dir=out_dir,
                      drain_timeout_s=drain_timeout,
                      command=" ".join(["taskstream", *map(shlex.quote, sys.argv[1:])]))
    try:
        outcome = run_chaos(settings, options, lambda line: click.echo(line))
    except TaskstreamError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    from taskstream.chaos.report import markdown

    click.echo(markdown(outcome.report))
    for path in outcome.paths:
        click.echo(f"report: {path}")
    if not outcome.findings.ok():
        raise SystemExit(1)


@chaos.command("plan")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--faults", "kinds", default="all", show_default=True, help=_KINDS_HELP)
@click.option("--count", default=36, show_default=True, type=click.IntRange(0, 10_000))
@click.option("--gap", default=33.0, show_default=True, type=click.FloatRange(1, 3600))
def plan(seed: int, kinds: str, count: int, gap: float) -> None:
    """Print the fault plan a seed gives (nothing is started)."""
    from taskstream.chaos.errors import ChaosError
    from taskstream.chaos.schedule import KINDS, make_plan, parse_kinds

    try:
        faults = make_plan(seed, parse_kinds(kinds), count, gap_s=gap)
    except ChaosError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    for fault in faults:
        skew = f" clock {fault.skew_ms / 3_600_000:+.0f} h" if fault.skew_ms else ""
        click.echo(f"{fault.index:3d}  at {fault.at_s:7.1f} s  {fault.kind:<16} hold "
                   f"{fault.hold_s:5.1f} s  target {fault.target}{skew}  ({KINDS[fault.kind]})")
