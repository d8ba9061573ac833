"""The `jobs-bridge` command line: demo, run, check-config, simulate and operator commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bridge import __version__, logs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobs-bridge")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning, error")
@click.option("--json-logs/--pretty-logs", default=None, help="Default: JSON unless a tty.")
@click.pass_context
def cli(ctx: click.Context, log_level: str, json_logs: bool | None) -> None:
    """Watch Elastic Path jobs and push every status change to webhooks, Slack and queues."""
    logs.setup(log_level, json_logs)
    ctx.ensure_object(dict)


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
    from bridge.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{config_path}: {len(exc.problems)} problem(s)", err=True)
        sys.exit(1)
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


def main() -> None:
    cli(prog_name="jobs-bridge")
