"""The `jobs-bridge` command line.

common   the group, the config option (default: $JOBS_BRIDGE_CONFIG), loading, Redis
service  check-config, simulate, run, demo
operate  status, subscriptions, dlq, replay
watch    tail, send-test
display  tables and progress bars for a terminal (rich)
"""

from bridge.cli import operate, service, watch  # noqa: F401  (each registers its commands)
from bridge.cli.common import cli


def main() -> None:
    cli(prog_name="jobs-bridge")
