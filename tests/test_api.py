"""The HTTP API of a running bridge: health, status, metrics, attempts, dead letters."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from helpers import eventually, free_port, make_config, webhook

from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.simulator import Simulator, make_app

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def start_hooks(
    aiohttp_server, redis_url: str, sim: Simulator, received: list[str], port: int
) -> BridgeConfig:
    """The config of the API on `port`, with subscriptions `good` (answers 204) and `broken`
    (answers 500) at a local receiver that records the webhook-id of every request."""
    sim_server = await aiohttp_server(make_app(sim))

    async def hook(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        return web.Response(status=500 if request.path.endswith("broken") else 204)

    hooks = web.Application()
    hooks.router.add_post("/{name}", hook)
    hook_server = await aiohttp_server(hooks)
    return make_config(
        redis_url,
        "api-store",
        str(sim_server.make_url("")).rstrip("/"),
        [
            webhook("good", hook_server.make_url("/good"), SECRET, allow_private_networks=True),
            webhook(
                "broken",
                hook_server.make_url("/broken"),
                SECRET,
                retry_schedule=["100ms"],
                allow_private_networks=True,
            ),
        ],
        api={"listen": f"127.0.0.1:{port}", "token": "let-me-in"},
    )


async def answers_ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_api_reports_what_an_on_call_engineer_needs(aiohttp_server, redis_url, redis_client):
    sim = Simulator()
    received: list[str] = []
    port = free_port()
    config = await start_hooks(aiohttp_server, redis_url, sim, received, port)
    bridge = Bridge(config, redis_client)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": "Bearer let-me-in"}
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: answers_ok(http, f"{base}/healthz"))
            async with http.get(f"{base}/status") as response:
                assert response.status == 401

            async def baseline_done() -> bool:
                async with http.get(f"{base}/status", headers=auth) as response:
                    return bool((await response.json())["pollers"][0]["baseline_done"])

            await eventually(baseline_done)  # the job below is news, not history
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
            # Which process polls it, under which lease: this one, the first to take it.
            assert poller["lease"]["holder"] == bridge.process_id
            assert poller["lease"]["token"] == 1 and 0 < poller["lease"]["expires_in"] <= 15
            assert [p["id"] for p in status["processes"]] == [bridge.process_id]
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
