"""Operator commands beside a running bridge, through its Redis: status, subscriptions, dead
letters and replays. The config file's subscriptions and the API's are both in effect here."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import click

from bridge.cli.common import cli, config_option, find_subscription, json_option, load, with_redis


async def _status(redis: Any, config: Any, *, stores: bool = True) -> tuple[Any, dict[str, str]]:
    """The status view of every subscription in effect, and each one's origin."""
    from bridge.catalog import effective_config, read_subscriptions
    from bridge.status import read_status

    subs = await read_subscriptions(redis, config)
    view = await read_status(redis, effective_config(config, subs), stores=stores)
    return view, {sub.name: origin for sub, origin in subs.with_origins()}


@cli.command()
@config_option
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """What the bridge knows, from its Redis: each store's pollers and outbox, each subscription."""
    from bridge.cli import display

    config = load(config_path)
    view, origins = with_redis(config, lambda redis: _status(redis, config))
    if as_json:
        found = view.to_json()
        for entry in found["subscriptions"]:
            entry["origin"] = origins[entry["name"]]
        click.echo(json.dumps(found, indent=2))
    elif display.to_terminal():
        display.show(*display.status_tables(view, origins))
    else:
        for line in view.lines():
            click.echo(line)


@cli.group()
def subscriptions() -> None:
    """Subscriptions of the config file and of the API: list, and re-enable a disabled one."""


@subscriptions.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def subscriptions_list(config_path: Path, as_json: bool) -> None:
    """Each subscription: its origin, enabled or why it was disabled, last success and failure."""
    from bridge.catalog import read_subscriptions
    from bridge.cli import display
    from bridge.subscription_view import subscription_views

    config = load(config_path)
    if as_json:

        async def views(redis: Any) -> list[dict[str, Any]]:
            return await subscription_views(redis, await read_subscriptions(redis, config))

        for view in with_redis(config, views):
            click.echo(json.dumps(view))
        return
    found, origins = with_redis(config, lambda redis: _status(redis, config, stores=False))
    if display.to_terminal():
        display.show(display.subscriptions_table(found, origins))
    else:
        for line in found.subscription_lines():
            click.echo(line)


@subscriptions.command("enable")
@config_option
@click.argument("name")
def subscriptions_enable(config_path: Path, name: str) -> None:
    """Re-enable a disabled subscription (its dead letters can then be replayed)."""
    from bridge.catalog import read_subscriptions
    from bridge.deliveries import Deliveries

    config = load(config_path)

    async def action(redis: Any) -> int:
        find_subscription(await read_subscriptions(redis, config), name, "NAME")
        deliveries = Deliveries(redis)
        await deliveries.enable(name)
        return len(await deliveries.dead_letters(name))

    dead = with_redis(config, action)
    click.echo(f"{name} enabled.")
    if dead:
        click.echo(
            f"{dead} dead letter(s) wait for it: jobs-bridge dlq replay -c {config_path} "
            f"--subscription {name} --all"
        )


@cli.group()
def dlq() -> None:
    """Dead letters: deliveries that ran out of retries or were refused."""


@dlq.command("list")
@config_option
@click.option("--subscription", "-s", default=None, help="Only this subscription.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(config_path: Path, subscription: str | None, as_json: bool) -> None:
    """List dead letters, oldest first."""
    from bridge.cli import display
    from bridge.deliveries import Deliveries

    config = load(config_path)
    letters = with_redis(config, lambda r: Deliveries(r).dead_letters(subscription))
    if as_json:
        for letter in letters:
            click.echo(json.dumps(dataclasses.asdict(letter)))
        return
    if display.to_terminal():
        display.show(display.dead_letters_table(letters))
    else:
        for letter in letters:
            click.echo(
                f"{letter.entry_id}  {letter.failed_at}  {letter.subscription}  "
                f"{letter.event['type']}  {letter.event_id}  attempts={letter.attempts}  "
                f"{letter.reason}"
            )
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
    config = load(config_path)

    async def action(redis: Any) -> int:
        deliveries = Deliveries(redis)
        return await deliveries.requeue(await deliveries.dead_letters(subscription, entry_id))

    count = with_redis(config, action)
    click.echo(f"{count} dead letter(s) queued for delivery; the running bridge sends them now.")


@cli.command()
@config_option
@click.option("--subscription", "-s", required=True, help="The subscription to send to.")
@click.option("--since", required=True, help="How far back, e.g. 30m, 2h, 3d.")
def replay(config_path: Path, subscription: str, since: str) -> None:
    """Re-send events from the outbox history (kept for `outbox_retention`, default 7d)."""
    from bridge.catalog import read_subscriptions
    from bridge.config import parse_duration
    from bridge.dispatcher import replay_since

    config = load(config_path)
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None

    async def action(redis: Any) -> int:
        subs = await read_subscriptions(redis, config)
        sub = find_subscription(subs, subscription, "--subscription")
        return await replay_since(redis, config, sub, time.time() - seconds)

    count = with_redis(config, action)
    click.echo(f"{count} event(s) queued for {subscription}; the running bridge sends them now.")
