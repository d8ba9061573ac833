"""Watching and checking deliveries: `tail` follows events as they are emitted, `send-test`
sends one test event to a subscription."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from bridge.cli.common import cli, config_option, find_subscription, load, with_redis


@cli.command()
@config_option
@click.option("--subscription", "-s", default=None, help="Its events and delivery outcomes.")
@click.option("--store", default=None, help="Only this store's events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def tail(config_path: Path, subscription: str | None, store: str | None, as_json: bool) -> None:
    """Follow events as they are emitted, one line each, until Ctrl-C. With -s: only the
    events that subscription receives, and the outcome of each delivery attempt to it."""
    from bridge.catalog import read_subscriptions
    from bridge.tail import attempt_line, event_line, follow

    config = load(config_path)
    stores = [s.name for s in config.stores]
    if store is not None and store not in stores:
        raise click.BadParameter(f"no store named {store!r}", param_hint="--store")

    def emit(line: Any, as_text: Any) -> None:
        click.echo(json.dumps(line) if as_json else as_text(line))

    async def action(redis: Any) -> None:
        sub = None
        if subscription is not None:
            subs = await read_subscriptions(redis, config)
            sub = find_subscription(subs, subscription, "--subscription")
        await follow(
            redis,
            [store] if store else stores,
            lambda event: emit(event, event_line),
            subscription=sub,
            on_attempt=lambda record: emit(record, attempt_line),
            on_ready=lambda: click.echo("following; Ctrl-C stops", err=True),
        )

    with contextlib.suppress(KeyboardInterrupt):
        with_redis(config, action)


@cli.command("send-test")
@config_option
@click.option("--subscription", "-s", required=True, help="The subscription to test.")
def send_test(config_path: Path, subscription: str) -> None:
    """Send one test event (com.elasticpath.bridge.test) through a subscription's sink, signed
    like any webhook; exit 0 when it was delivered, 1 when not."""
    from bridge.catalog import read_subscriptions
    from bridge.testevent import send_test as send

    config = load(config_path)

    async def action(redis: Any) -> Any:
        sub = find_subscription(await read_subscriptions(redis, config), subscription, "-s")
        return await send(redis, config, sub)

    outcome = with_redis(config, action)
    status = f" (HTTP {outcome.status})" if outcome.status is not None else ""
    took = f"{outcome.duration_ms:.0f} ms"
    if outcome.ok:
        click.echo(f"{subscription}: test event delivered{status} in {took}")
        return
    click.echo(f"{subscription}: test event FAILED{status} after {took}: {outcome.error}")
    sys.exit(1)
