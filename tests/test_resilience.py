"""The bridge's own Redis goes away and comes back: nothing crashes, nothing is lost."""

from __future__ import annotations

import asyncio

from helpers import eventually, make_config, start_receiver, webhook

from bridge.app import Bridge, open_redis
from bridge.embedded import EmbeddedRedis
from bridge.simulator import Simulator, make_app


async def test_bridge_rides_out_a_redis_restart(aiohttp_server, tmp_path):
    receiver = await start_receiver(aiohttp_server)
    received = receiver.received
    sim = Simulator()
    sim_server = await aiohttp_server(make_app(sim))
    redis_server = EmbeddedRedis(tmp_path / "redis", persist=True)
    url = redis_server.start()
    hook = webhook(
        "hooks",
        receiver.url,
        receiver.secret,
        retry_schedule=["200ms", "500ms", "1s", "2s"],
        allow_private_networks=True,
    )
    config = make_config(url, "rs", str(sim_server.make_url("")).rstrip("/"), [hook])
    redis = open_redis(url)
    stop = asyncio.Event()
    bridge = Bridge(config, redis)
    task = asyncio.create_task(bridge.run(stop))
    try:
        store = bridge.stores["rs"]
        await eventually(lambda: store.get_meta("baseline:pcm"), 10, "the baseline")
        before = sim.create_job()
        await eventually(lambda: (before, "pending") in received, 10, "the first event")

        redis_server.stop()  # the bridge's Redis is gone; the API keeps moving
        sim.set_status(before, "started")
        during = sim.create_job()
        # Fence: the poller has hit the outage (and carried on) before Redis comes back.
        poller = bridge.pollers[0]
        await eventually(lambda: poller.stats["poll_failures"] >= 1, 10, "a failed poll")
        assert not task.done(), "the bridge must ride out a Redis outage"

        await asyncio.to_thread(redis_server.start)  # back, with its append-only file
        sim.set_status(before, "success")
        await eventually(
            lambda: {(before, "success"), (during, "pending")} <= received,
            20,
            "the changes made during and after the outage",
        )
        assert not task.done()
        # `started` happened while Redis was down and was superseded before it came back:
        # the bridge reports what it could see, never a made-up event.
        statuses = {status for subject, status in received if subject == before}
        assert statuses <= {"pending", "started", "success"}
        assert bridge.pollers[0].stats["poll_failures"] >= 1
    finally:
        stop.set()
        await task
        await redis.aclose()
        redis_server.stop()
