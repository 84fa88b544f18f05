"""The ``taskstream`` command.

Subcommands are imported only when used (a lazy click group), so ``taskstream
kafka up`` does not pay for importing Faust. Each entry names ``module:attr`` of
a click command; the modules live beside this one.
"""

from __future__ import annotations

import importlib

import click

_COMMANDS: dict[str, str] = {
    "kafka": "taskstream.cli.kafka_cmd:kafka",
    "topics": "taskstream.cli.kafka_cmd:topics",
    "config": "taskstream.cli.config_cmd:config",
    "submit": "taskstream.cli.submit_cmd:submit",
    "processor": "taskstream.cli.processor_cmd:processor",
    "worker": "taskstream.cli.worker_cmd:worker",
    "status": "taskstream.cli.admin_cmds:status",
    "list": "taskstream.cli.admin_cmds:list_tasks",
    "cancel": "taskstream.cli.admin_cmds:cancel",
    "redrive": "taskstream.cli.admin_cmds:redrive",
    "queues": "taskstream.cli.admin_cmds:queues",
    "workers": "taskstream.cli.admin_cmds:workers",
    "doctor": "taskstream.cli.doctor_cmd:doctor",
    "pause": "taskstream.cli.admin_cmds:pause",
    "resume": "taskstream.cli.admin_cmds:resume",
    "wait": "taskstream.cli.admin_cmds:wait",
    "dlq": "taskstream.cli.admin_cmds:dlq",
    "schedule": "taskstream.cli.schedule_cmd:schedule",
    "limits": "taskstream.cli.limits_cmd:limits",
    "replay": "taskstream.cli.replay_cmd:replay",
    "quarantine": "taskstream.cli.quarantine_cmd:quarantine",
    "dev": "taskstream.cli.dev_cmd:dev",
    "result": "taskstream.cli.storage_cmd:result",
    "purge": "taskstream.cli.storage_cmd:purge",
    "storage": "taskstream.cli.storage_cmd:storage",
    "acls": "taskstream.cli.security_cmd:acls",
    "keys": "taskstream.cli.security_cmd:keys",
    "users": "taskstream.cli.security_cmd:users",
    "chaos": "taskstream.cli.chaos_cmd:chaos",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="taskstream")
def main() -> None:
    """taskstream: tasks as events on Kafka, state as a fold of the log."""
