"""The stand-alone fake API behind `jobs-bridge simulate`: serve until interrupted."""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.simulator.app import make_app
from bridge.simulator.state import Simulator

log = structlog.get_logger(__name__)


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    traffic_rate: float = 0.0,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
) -> None:
    """Run the fake API until interrupted, optionally with automatic traffic."""
    sim = Simulator(client_id=client_id, client_secret=client_secret)
    app = make_app(sim)
    url = f"http://{host}:{port}"

    async def start_traffic(_app: web.Application) -> None:
        sim.start_traffic(traffic_rate)

    if traffic_rate > 0:
        app.on_startup.append(start_traffic)

    def announce(_default_message: str) -> None:
        # Called by run_app once the port is bound, so the URL printed is really serving.
        print(f"Elastic Path simulator serving on {url}", flush=True)
        print(f"  client_id={client_id} client_secret={client_secret}", flush=True)
        print("  control: /_sim/stats, /_sim/jobs, /_sim/faults, ... (Ctrl+C to stop)", flush=True)

    log.info("sim_serving", url=url, traffic_rate=traffic_rate)
    web.run_app(app, host=host, port=port, print=announce)
