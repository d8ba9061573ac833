"""The `jobs-bridge` group and what its commands share: the config option, loading, Redis."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bridge import __version__, logs

T = TypeVar("T")

CONFIG_ENV = "JOBS_BRIDGE_CONFIG"
# The config's log_level words (bridge.config.models.LOG_LEVELS), without importing the config.
LOG_LEVELS = ("debug", "info", "warning", "error")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobs-bridge")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="[default: info for run and simulate, warning for the others]",
)
@click.option("--json-logs/--pretty-logs", default=None, help="Default: JSON unless a tty.")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, json_logs: bool | None) -> None:
    """Watch Elastic Path jobs and push every status change to webhooks, Slack and queues."""
    # Only the services log at info by default; the other commands print what they are for.
    quiet = ctx.invoked_subcommand not in ("run", "simulate")
    log_level = log_level.lower() if log_level else None
    logs.setup(log_level or ("warning" if quiet else "info"), json_logs)
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["json_logs"] = json_logs


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar=CONFIG_ENV,
    show_envvar=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The bridge's YAML config file.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")


def load(config_path: Path, *, report: bool = False) -> Any:
    """The validated config, or every problem printed and exit 1.

    `report`: the problems are the command's output (check-config), so they go to stdout.
    """
    from bridge.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=not report)
        click.echo(f"{config_path}: {len(exc.problems)} problem(s)", err=not report)
        sys.exit(1)


def with_redis(config: Any, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(redis)` against the bridge's Redis (the running embedded one, if any)."""
    from bridge.app import connect_redis

    async def main() -> T:
        async with connect_redis(config) as redis:
            return await action(redis)

    return asyncio.run(main())


def find_subscription(subscriptions: Any, name: str, hint: str) -> Any:
    """The subscription in effect called `name` (the config file's or the API's), or a usage
    error naming the option `hint`."""
    found = subscriptions.get(name)
    if found is None:
        raise click.BadParameter(f"no subscription named {name!r}", param_hint=hint)
    return found[0]
