"""Benchmark: signed webhook deliveries per second and outbox-to-receipt latency, beside bare POSTs.

Run: `python bench/webhook_throughput.py` (Redis at REDIS_URL, default redis://127.0.0.1:6379/13,
is flushed at start and end). Prints numbers, asserts nothing.

The receiver runs in a process of its own (so it does not share the event loop it is measuring)
and answers 204 at once; it checks the signature of every 50th signed request. Throughput: EVENTS
events are appended to the outbox with `Store.observe` first, then a Dispatcher with one
WebhookSink per subscription drains it; the clock runs from the dispatcher's start until the
receiver has every delivery. The bare loop POSTs the same bodies with plain aiohttp sessions, one
per destination and `concurrency` (the subscription default, 10) requests in flight per
destination, which is what the dispatcher allows. Latency: events appended one by one at a steady
rate while the dispatcher runs; append time (before `observe`) to arrival at the receiver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from bridge.app import open_redis
from bridge.config import BridgeConfig, parse_config
from bridge.dispatcher import Dispatcher
from bridge.events import encode
from bridge.jobs import Job
from bridge.sinks.base import SinkContext
from bridge.sinks.registry import build_sink
from bridge.store import Observation, Store, event_from_outbox

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
STORE = "bench"
EVENTS = 2_000
SUBSCRIPTION_COUNTS = (1, 10)
LATENCY_RATE = 200  # events per second
LATENCY_SECONDS = 5.0
VERIFY_EVERY = 50
SECRET = "whsec_" + base64.b64encode(b"jobs-bridge benchmark secret!!").decode()


# -- the receiver, in its own process ------------------------------------------------------


def serve_receiver(port: int, secret: str) -> None:
    """A webhook endpoint that counts, timestamps first arrivals, and spot-checks signatures."""
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    webhook = Webhook(secret)
    state: dict[str, Any] = {"count": 0, "verified": 0, "bad": 0, "first": {}}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        state["count"] += 1
        event_id = request.headers.get("webhook-id")
        if event_id is not None:
            state["first"].setdefault(event_id, arrived)
            if state["count"] % VERIFY_EVERY == 0:
                try:
                    webhook.verify(body, dict(request.headers))
                    state["verified"] += 1
                except WebhookVerificationError:
                    state["bad"] += 1
        return web.Response(status=204)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({k: state[k] for k in ("count", "verified", "bad")})

    async def arrivals(_request: web.Request) -> web.Response:
        return web.json_response(state["first"])

    async def reset(_request: web.Request) -> web.Response:
        state.update(count=0, verified=0, bad=0, first={})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{n}", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class ReceiverClient:
    """The benchmark's view of the receiver process."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession()

    async def wait_ready(self) -> None:
        for _ in range(200):
            try:
                await self.stats()
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the receiver process did not start")

    async def stats(self) -> dict[str, int]:
        async with self.session.get(f"{self.base}/stats") as response:
            return await response.json()

    async def arrivals(self) -> dict[str, float]:
        async with self.session.get(f"{self.base}/arrivals") as response:
            return await response.json()

    async def reset(self) -> None:
        async with self.session.post(f"{self.base}/reset"):
            pass

    async def wait_for(self, count: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while (await self.stats())["count"] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got fewer than {count} requests in {within} s")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.session.close()


# -- the bridge side -----------------------------------------------------------------------


def bench_config(base: str, subscriptions: int) -> BridgeConfig:
    data = {
        "redis": {"url": REDIS_URL},
        "allow_private_networks": True,
        "stores": [
            {
                "name": STORE,
                "api_base": "http://127.0.0.1:9",  # never polled: no poller runs here
                "client_id": "bench",
                "client_secret": "bench",
            }
        ],
        "subscriptions": [
            {"name": f"hook-{n}", "type": "webhook", "url": f"{base}/hook/{n}", "secrets": [SECRET]}
            for n in range(subscriptions)
        ],
    }
    return parse_config(json.dumps(data), environ={})


def new_jobs(count: int) -> list[Job]:
    now = datetime.now(UTC)
    return [
        Job(
            id=str(uuid.uuid4()),
            source="pcm",
            type="product-import",
            status="pending",
            created_at=now,
            updated_at=now,
            meta={"x_request_id": str(uuid.uuid4()), "file": "catalogue.csv"},
        )
        for _ in range(count)
    ]


def make_dispatcher(redis: aioredis.Redis, config: BridgeConfig) -> Dispatcher:
    store = Store(redis, STORE)
    sinks = {
        sub.name: build_sink(sub, SinkContext(redis, config.subscription_allows_private(sub)))
        for sub in config.subscriptions
    }
    return Dispatcher(redis, [store.events_key], config.subscriptions, sinks)


async def fill_outbox(redis: aioredis.Redis, count: int) -> tuple[float, list[bytes]]:
    """Append `count` events; seconds taken, and the bodies the dispatcher will send."""
    store = Store(redis, STORE)
    started = time.perf_counter()
    jobs = new_jobs(count)
    for i in range(0, count, 500):
        await store.observe(Observation(job) for job in jobs[i : i + 500])
    elapsed = time.perf_counter() - started
    entries = await redis.xrange(store.events_key)
    return elapsed, [encode(event_from_outbox(fields)) for _, fields in entries]


async def bridge_run(
    redis: aioredis.Redis, receiver: ReceiverClient, subscriptions: int
) -> tuple[float, float, list[bytes], dict[str, int]]:
    """(append seconds, delivery seconds, bodies, receiver stats) for one subscription count."""
    await redis.flushdb()
    await receiver.reset()
    config = bench_config(receiver.base, subscriptions)
    dispatcher = make_dispatcher(redis, config)
    stop = asyncio.Event()
    await dispatcher.prepare(stop)  # consumer groups first: they start at the outbox's end
    append_seconds, bodies = await fill_outbox(redis, EVENTS)
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run(stop))
    await receiver.wait_for(EVENTS * subscriptions)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return append_seconds, elapsed, bodies, await receiver.stats()


async def bare_run(
    receiver: ReceiverClient, bodies: list[bytes], destinations: int, concurrency: int
) -> float:
    """Seconds for plain aiohttp to POST every body to every destination."""
    await receiver.reset()
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        for _ in range(destinations)
    ]

    async def worker(session: aiohttp.ClientSession, url: str, queue: list[bytes]) -> None:
        while queue:
            body = queue.pop()
            async with session.post(
                url, data=body, headers={"content-type": "application/json"}
            ) as response:
                await response.read()

    started = time.perf_counter()
    workers = []
    for n, session in enumerate(sessions):
        queue = list(bodies)
        url = f"{receiver.base}/hook/{n}"
        workers += [worker(session, url, queue) for _ in range(concurrency)]
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    for session in sessions:
        await session.close()
    await receiver.wait_for(len(bodies) * destinations)
    return elapsed


async def latency_run(redis: aioredis.Redis, receiver: ReceiverClient) -> list[float]:
    """Milliseconds from outbox append to arrival, for events appended at a steady rate."""
    await redis.flushdb()
    await receiver.reset()
    config = bench_config(receiver.base, 1)
    store = Store(redis, STORE)
    dispatcher = make_dispatcher(redis, config)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await asyncio.sleep(0.5)  # consumer group created, first XREADGROUP blocking
    total = int(LATENCY_RATE * LATENCY_SECONDS)
    appended: dict[str, float] = {}
    jobs = new_jobs(total)
    begin = time.monotonic()
    for i, job in enumerate(jobs):
        delay = begin + i / LATENCY_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        at = time.time()
        await store.observe([Observation(job)])
        appended[job.id] = at
    await receiver.wait_for(total)
    stop.set()
    await task
    by_event = {event_id_of(job): job.id for job in jobs}
    arrivals = await receiver.arrivals()
    return [(arrivals[eid] - appended[by_event[eid]]) * 1000 for eid in arrivals]


def event_id_of(job: Job) -> str:
    from bridge.events import event_id

    return event_id(STORE, "pcm", job.id, "pending")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main(port: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    redis = open_redis(REDIS_URL)  # the bridge's own client (a blocking pool)
    receiver = ReceiverClient(f"http://127.0.0.1:{port}")
    await redis.flushdb()
    try:
        await receiver.wait_ready()
        print(
            f"jobs-bridge webhook benchmark: Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, Redis {REDIS_URL} (the bridge's blocking pool), "
            "receiver in its own process"
        )
        print(
            f"{EVENTS} events per run; bare = plain aiohttp POSTs of the same bodies, same "
            "concurrency (10 in flight per destination)\n"
        )
        print(
            f"{'subscriptions':>13} {'deliveries':>10} {'bridge/s':>9} {'bare/s':>8} "
            f"{'bridge:bare':>11} {'outbox append/s':>16} {'signatures':>12}"
        )
        for subscriptions in SUBSCRIPTION_COUNTS:
            append_s, bridge_s, bodies, stats = await bridge_run(redis, receiver, subscriptions)
            bare_s = await bare_run(receiver, bodies, subscriptions, concurrency=10)
            deliveries = EVENTS * subscriptions
            bridge_rate, bare_rate = deliveries / bridge_s, deliveries / bare_s
            signatures = f"{stats['verified']} ok/{stats['bad']} bad"
            print(
                f"{subscriptions:>13} {deliveries:>10} {bridge_rate:>9.0f} {bare_rate:>8.0f} "
                f"{bridge_rate / bare_rate:>11.2f} {EVENTS / append_s:>16.0f} {signatures:>12}"
            )
        latencies = await latency_run(redis, receiver)
        print(
            f"\nlatency, outbox append -> receipt, {LATENCY_RATE} events/s for "
            f"{LATENCY_SECONDS:g} s ({len(latencies)} events, 1 subscription): "
            f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
            f"max {max(latencies):.1f} ms"
        )
    finally:
        await redis.flushdb()
        await redis.aclose()
        await receiver.close()


if __name__ == "__main__":
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=serve_receiver, args=(port, SECRET), daemon=True
    )
    process.start()
    try:
        asyncio.run(main(port))
    finally:
        process.terminate()
        process.join(5)
    sys.exit(0)
