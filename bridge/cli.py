"""The `jobs-bridge` command line: demo, run, check-config, simulate and operator commands."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bridge import __version__, logs

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobs-bridge")
@click.option("--log-level", default=None, help="debug, info, warning, error [default: info]")
@click.option("--json-logs/--pretty-logs", default=None, help="Default: JSON unless a tty.")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, json_logs: bool | None) -> None:
    """Watch Elastic Path jobs and push every status change to webhooks, Slack and queues."""
    # Only the services log at info by default; the other commands print what they are for.
    quiet = ctx.invoked_subcommand not in ("run", "simulate")
    logs.setup(log_level or ("warning" if quiet else "info"), json_logs)
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["json_logs"] = json_logs


def _load(config_path: Path, *, report: bool = False) -> Any:
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


def _with_redis(config: Any, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(redis)` against the bridge's Redis (the running embedded one, if any)."""
    from bridge.app import connect_redis

    async def main() -> T:
        async with connect_redis(config) as redis:
            return await action(redis)

    return asyncio.run(main())


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The bridge's YAML config file.",
)


@cli.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate a config file: every problem with its path; exit 0 valid, 1 invalid."""
    config = _load(config_path, report=True)
    click.echo(
        f"{config_path}: valid ({len(config.stores)} store(s), "
        f"{len(config.subscriptions)} subscription(s))"
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--traffic/--no-traffic", default=False, help="Create and walk jobs automatically.")
@click.option("--rate", default=1.0, show_default=True, help="New jobs per second with --traffic.")
def simulate(host: str, port: int, traffic: bool, rate: float) -> None:
    """Serve the fake Elastic Path Jobs API alone (credentials: sim-client / sim-secret)."""
    from bridge.simulator import serve

    serve(host=host, port=port, traffic_rate=rate if traffic else 0.0)


@cli.command()
@config_option
@click.option("--seconds", type=float, default=None, help="Stop after N seconds.")
@click.pass_context
def run(ctx: click.Context, config_path: Path, seconds: float | None) -> None:
    """Run the bridge: poll every store, deliver every event. SIGINT/SIGTERM stop cleanly."""
    from bridge.app import run_until_stopped
    from bridge.sinks.registry import MissingExtra

    config = _load(config_path)
    if ctx.obj["log_level"] is None:  # --log-level wins over the config's log_level
        logs.setup(config.log_level, ctx.obj["json_logs"])
    try:
        asyncio.run(run_until_stopped(config, seconds))
    except MissingExtra as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@cli.command()
@click.option("--seconds", type=float, default=None, help="Stop after N seconds (default: Ctrl-C).")
@click.option("--rate", type=float, default=0.5, show_default=True, help="New jobs per second.")
def demo(seconds: float | None, rate: float) -> None:
    """Zero config: simulated Elastic Path -> bridge -> signed webhooks, printed as they arrive."""
    from bridge.demo import run_demo

    asyncio.run(run_demo(seconds, rate))


@cli.group()
def dlq() -> None:
    """Dead letters: deliveries that ran out of retries or were refused."""


@dlq.command("list")
@config_option
@click.option("--subscription", "-s", default=None, help="Only this subscription.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(config_path: Path, subscription: str | None, as_json: bool) -> None:
    """List dead letters, oldest first."""
    from bridge.deliveries import Deliveries

    config = _load(config_path)
    letters = _with_redis(config, lambda r: Deliveries(r).dead_letters(subscription))
    for letter in letters:
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(letter)))
        else:
            click.echo(
                f"{letter.entry_id}  {letter.failed_at}  {letter.subscription}  "
                f"{letter.event['type']}  {letter.event_id}  attempts={letter.attempts}  "
                f"{letter.reason}"
            )
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s)", err=True)


@dlq.command("replay")
@config_option
@click.option("--subscription", "-s", default=None, help="Only this subscription.")
@click.option("--id", "entry_id", default=None, help="One dead letter (its id from `dlq list`).")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter (of --subscription).")
def dlq_replay(
    config_path: Path, subscription: str | None, entry_id: str | None, replay_all: bool
) -> None:
    """Send dead letters again: they go back on the retry schedule, due now."""
    from bridge.deliveries import Deliveries

    if bool(entry_id) == replay_all:
        raise click.UsageError("give exactly one of --id ID or --all")
    config = _load(config_path)

    async def action(redis: Any) -> int:
        deliveries = Deliveries(redis)
        return await deliveries.requeue(await deliveries.dead_letters(subscription, entry_id))

    count = _with_redis(config, action)
    click.echo(f"{count} dead letter(s) queued for delivery; the running bridge sends them now.")


@cli.command()
@config_option
@click.option("--subscription", "-s", required=True, help="The subscription to send to.")
@click.option("--since", required=True, help="How far back, e.g. 30m, 2h, 3d.")
def replay(config_path: Path, subscription: str, since: str) -> None:
    """Re-send events from the outbox history (kept for `outbox_retention`, default 7d)."""
    from bridge.config import parse_duration
    from bridge.dispatcher import replay_since

    config = _load(config_path)
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    sub = next((s for s in config.subscriptions if s.name == subscription), None)
    if sub is None:
        raise click.BadParameter(
            f"no subscription named {subscription!r}", param_hint="--subscription"
        )
    count = _with_redis(config, lambda r: replay_since(r, config, sub, time.time() - seconds))
    click.echo(f"{count} event(s) queued for {subscription}; the running bridge sends them now.")


@cli.group()
def subscriptions() -> None:
    """Subscription health: list, and re-enable a disabled one."""


@subscriptions.command("list")
@config_option
def subscriptions_list(config_path: Path) -> None:
    """Each subscription: enabled or why it was disabled, last success and failure."""
    from bridge.status import read_status

    config = _load(config_path)
    view = _with_redis(config, lambda redis: read_status(redis, config, stores=False))
    for line in view.subscription_lines():
        click.echo(line)


@cli.command()
@config_option
def status(config_path: Path) -> None:
    """What the bridge knows, from its Redis: each store's pollers and outbox, each subscription."""
    from bridge.status import read_status

    config = _load(config_path)
    for line in _with_redis(config, lambda redis: read_status(redis, config)).lines():
        click.echo(line)


@subscriptions.command("enable")
@config_option
@click.argument("name")
def subscriptions_enable(config_path: Path, name: str) -> None:
    """Re-enable a disabled subscription (its dead letters can then be replayed)."""
    from bridge.deliveries import Deliveries

    config = _load(config_path)
    if name not in {s.name for s in config.subscriptions}:
        raise click.BadParameter(f"no subscription named {name!r}", param_hint="NAME")

    async def action(redis: Any) -> int:
        deliveries = Deliveries(redis)
        await deliveries.enable(name)
        return len(await deliveries.dead_letters(name))

    dead = _with_redis(config, action)
    click.echo(f"{name} enabled.")
    if dead:
        click.echo(
            f"{dead} dead letter(s) wait for it: jobs-bridge dlq replay -c {config_path} "
            f"--subscription {name} --all"
        )


def main() -> None:
    cli(prog_name="jobs-bridge")
