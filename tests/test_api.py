"""The HTTP API of a running bridge: health, status, metrics, attempts, dead letters."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from helpers import eventually, free_port

from bridge.app import Bridge
from bridge.config import parse_config
from bridge.simulator import Simulator, make_app

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_api_reports_what_an_on_call_engineer_needs(aiohttp_server, redis_url, redis_client):
    sim = Simulator()
    sim_server = await aiohttp_server(make_app(sim))
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        return web.Response(status=500 if request.path.endswith("broken") else 204)

    hooks = web.Application()
    hooks.router.add_post("/{name}", hook)
    hook_server = await aiohttp_server(hooks)
    port = free_port()
    config = parse_config(
        f"""
redis: {{url: "{redis_url}"}}
stores:
  - name: api-store
    api_base: {str(sim_server.make_url("")).rstrip("/")}
    client_id: sim-client
    client_secret: sim-secret
    poll_interval: 100ms
    idle_poll_interval: 200ms
    max_requests_per_second: 100
subscriptions:
  - name: good
    type: webhook
    url: {hook_server.make_url("/good")}
    secrets: [{SECRET}]
    allow_private_networks: true
  - name: broken
    type: webhook
    url: {hook_server.make_url("/broken")}
    secrets: [{SECRET}]
    retry_schedule: [100ms]
    allow_private_networks: true
api:
  listen: 127.0.0.1:{port}
  token: let-me-in
""",
        environ={},
    )
    bridge = Bridge(config, redis_client)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": "Bearer let-me-in"}
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(f"{base}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(up)
            async with http.get(f"{base}/status") as response:
                assert response.status == 401
            job_id = sim.create_job()

            async def dead_lettered() -> bool:
                async with http.get(f"{base}/dlq", headers=auth) as response:
                    return len((await response.json())["dead_letters"]) == 1

            await eventually(dead_lettered)
            async with http.get(f"{base}/status", headers=auth) as response:
                status = await response.json()
            [poller] = status["pollers"]
            assert poller["store"] == "api-store" and poller["baseline_done"]
            assert poller["open_jobs"] == 1 and poller["last_poll_at"]
            subs = {s["name"]: s for s in status["subscriptions"]}
            assert subs["good"]["counters"]["delivered"] == 1
            assert subs["broken"]["dead_letters"] == 1
            assert "500" in subs["broken"]["last_error"]
            assert status["outboxes"]["api-store"]["lag"] == 0

            event_id = received[0]
            async with http.get(f"{base}/events/{event_id}/attempts", headers=auth) as response:
                attempts = (await response.json())["attempts"]
            by_sub = sorted((a["subscription"], a["attempt"], a["status"]) for a in attempts)
            assert by_sub == [("broken", 1, 500), ("broken", 2, 500), ("good", 1, 204)]

            async with http.get(f"{base}/metrics", headers=auth) as response:
                text = await response.text()
            assert 'jobs_bridge_delivered_total{subscription="good"} 1' in text
            assert 'jobs_bridge_dead_lettered_total{subscription="broken"} 1' in text
            # prometheus_client writes labels in alphabetical order
            assert 'jobs_bridge_poll_events_total{source="pcm",store="api-store"} 1' in text
            assert 'jobs_bridge_outbox_lag{store="api-store"} 0.0' in text

            async with http.post(
                f"{base}/dlq/replay", headers=auth, json={"all": True}
            ) as response:
                assert (await response.json()) == {"queued": 1}
            await eventually(dead_lettered)  # fails again, and is dead-lettered again
            assert job_id
    finally:
        stop.set()
        await task
