"""The commands that run something: check-config, simulate, run and demo."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from bridge import logs
from bridge.cli.common import cli, config_option, load


@cli.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate a config file: every problem with its path; exit 0 valid, 1 invalid."""
    config = load(config_path, report=True)
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
    """Run the bridge: poll every store, deliver every event. SIGINT/SIGTERM stop cleanly;
    SIGHUP reads the config file again."""
    from bridge.app import run_until_stopped
    from bridge.cli.display import baseline_bars
    from bridge.sinks.registry import MissingExtra

    config = load(config_path)
    level = ctx.obj["log_level"] or config.log_level  # --log-level wins over the config's

    def relog() -> None:
        logs.setup(level, ctx.obj["json_logs"])

    relog()
    try:
        with baseline_bars(relog):
            asyncio.run(run_until_stopped(config, seconds, config_path=config_path))
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
