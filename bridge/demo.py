"""`jobs-bridge demo`: the whole pipeline on embedded defaults, printing each event it delivers.

Embedded Redis, the simulator producing job traffic, the bridge polling it, and a local webhook
receiver that verifies every signature the way a consumer would.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import tempfile
import time
from pathlib import Path

import click
import standardwebhooks
from aiohttp import web

from bridge.app import Bridge, connect_redis, install_signal_handlers
from bridge.config import BridgeConfig, parse_config
from bridge.jobs import JobStatus
from bridge.simulator import Simulator, make_app

STATUS_COLOURS = {
    JobStatus.PENDING: "white",
    JobStatus.STARTED: "cyan",
    JobStatus.SUCCESS: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "yellow",
    JobStatus.STALLED: "magenta",
}


CONSOLE_PORT = 8787


def console_port() -> int:
    """The API's usual port when it is free, else any free one."""
    for port in (CONSOLE_PORT, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port for the console")


def demo_config(
    data_dir: Path, api_base: str, hook_url: str, secret: str, port: int = CONSOLE_PORT
) -> BridgeConfig:
    """A real config, validated like any user's."""
    return parse_config(
        f"""
data_dir: {data_dir}
api:
  listen: 127.0.0.1:{port}
stores:
  - name: demo
    api_base: {api_base}
    client_id: sim-client
    client_secret: sim-secret
    sources: [pcm, v2]
    poll_interval: 1s
    idle_poll_interval: 2s
    max_requests_per_second: 20
    stall_after: 20s
subscriptions:
  - name: demo-receiver
    type: webhook
    url: {hook_url}
    secrets: [{secret}]
    retry_schedule: [1s, 2s, 5s]
    allow_private_networks: true
""",
        environ={},
        origin="<demo>",
    )


class Receiver:
    """A consumer's webhook endpoint: verifies each request, prints the event."""

    def __init__(self, secret: str) -> None:
        self.verifier = standardwebhooks.Webhook(secret)
        self.received = 0
        self.rejected = 0
        self.seen: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self.verifier.verify(body, dict(request.headers))
        except standardwebhooks.WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=401, text="bad signature")
        self.received += 1
        duplicate = event["id"] in self.seen
        self.seen.add(event["id"])
        click.echo(format_event(event, duplicate))
        return web.Response(status=204)


def format_event(event: dict, duplicate: bool = False) -> str:
    data = event["data"]
    job = data["job"]
    status = data["status"]
    arrow = f"{data['previous_status'] or 'new'} -> " if status != JobStatus.STALLED else ""
    line = (
        f"{time.strftime('%H:%M:%S')}  {data['source']:<3}  {job['type']:<19} "
        f"{job['id'][:8]}  {arrow}{click.style(status, fg=STATUS_COLOURS.get(status), bold=True)}"
        f"  seq {event['sequence']}"
    )
    if data.get("errors"):
        line += f"  ({data['errors'][0]['message']})"
    if data.get("file_locations"):
        line += f"  file: {data['file_locations'][0]}"
    if duplicate:
        line += "  [redelivery, same id]"
    return line


async def _start_site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def run_demo(seconds: float | None, rate: float) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    if seconds is not None:
        asyncio.get_running_loop().call_later(seconds, stop.set)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = Receiver(secret)
    hook_app = web.Application()
    hook_app.router.add_post("/hooks", receiver.handle)
    simulator = Simulator()
    sim_runner, api_base = await _start_site(make_app(simulator))
    hook_runner, hook_base = await _start_site(hook_app)
    with tempfile.TemporaryDirectory(prefix="jobs-bridge-demo-") as data_dir:
        port = console_port()
        config = demo_config(Path(data_dir), api_base, f"{hook_base}/hooks", secret, port)
        click.echo(
            f"jobs-bridge demo: simulated Elastic Path at {api_base}, "
            f"signed webhooks to {hook_base}/hooks, embedded Redis in {data_dir}"
        )
        click.echo(click.style(f"Console: http://127.0.0.1:{port}/", bold=True))
        click.echo("Each line is one event, delivered and its signature verified. Ctrl-C stops.\n")
        try:
            async with connect_redis(config) as redis:
                bridge = Bridge(config, redis)
                simulator.start_traffic(rate)
                await bridge.run(stop)
        finally:
            await simulator.aclose()
            await hook_runner.cleanup()
            await sim_runner.cleanup()
    click.echo(
        f"\n{receiver.received} event(s) received, {len(receiver.seen)} distinct, "
        f"{receiver.rejected} rejected signature(s)."
    )
