"""Benchmark: isolation and bounded state of delivery (issue 9).

Run: `python bench/isolation.py [--events 100000]` (Redis at REDIS_URL, default
redis://127.0.0.1:6379/14, is flushed at start and end). Prints numbers, asserts nothing;
writes bench/results/isolation.json.

1. A healthy webhook subscription's change-to-receipt latency (append before `observe` to first
   arrival at the receiver), events appended at a steady rate, alone and then with a
   black-holed subscription beside it (a listener that never answers; 30 s timeout), in the
   same run against the same receiver process.
2. EVENTS events appended while one subscription is down (`enabled: false`: its consumer
   groups stay, so it owes them all) and a healthy one delivers them: the outbox length and its
   memory (MEMORY USAGE), the server's used_memory, after a trim pass; then the same once the
   down subscription is removed (its groups deleted) and a trim at zero retention.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from typing import Any

import harness
import redis.asyncio as aioredis
from harness import SECRET, Receiver
from webhook_throughput import STORE, append_steadily, new_jobs

from bridge.app import open_redis
from bridge.dispatcher import Dispatcher
from bridge.outbox import backlog
from bridge.sinks.base import SinkContext
from bridge.sinks.registry import build_sink
from bridge.sinks.webhook import WebhookSubscription
from bridge.store import Observation, Store

LATENCY_RATE = 100  # events per second
LATENCY_SECONDS = harness.quick(10.0, 3.0)
EVENTS = harness.quick(100_000, 5_000)


def subscription(name: str, url: str, **options: Any) -> WebhookSubscription:
    data = {"name": name, "type": "webhook", "url": url, "secrets": [SECRET]}
    data |= {"allow_private_networks": True, **options}
    return WebhookSubscription.model_validate(data)


def dispatcher(redis: aioredis.Redis, subs: list[WebhookSubscription]) -> Dispatcher:
    return Dispatcher(
        redis,
        [Store(redis, STORE).events_key],
        subs,
        build_sink=lambda sub: build_sink(sub, SinkContext(redis, True)),
    )


def black_hole() -> tuple[socket.socket, str]:
    """A listener that never accepts: connections queue, requests are never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50": harness.percentile(values, 50),
        "p99": harness.percentile(values, 99),
        "max": max(values),
        "n": len(values),
    }


def show(p: dict[str, float]) -> str:
    return f"p50 {p['p50']:6.1f} ms  p99 {p['p99']:6.1f} ms  max {p['max']:6.1f} ms  (n={p['n']})"


async def latency(
    redis: aioredis.Redis, receiver: Receiver, subs: list[WebhookSubscription]
) -> list[float]:
    """Milliseconds from append to first arrival at the healthy receiver."""
    await redis.flushdb()
    await receiver.reset()
    found = dispatcher(redis, subs)
    stop = asyncio.Event()
    await found.prepare(stop)
    task = asyncio.create_task(found.run(stop))
    store = Store(redis, STORE)
    total = int(LATENCY_RATE * LATENCY_SECONDS)
    appended = await append_steadily(store, total, LATENCY_RATE)
    await receiver.wait_for(total)
    arrivals = await receiver.arrivals()
    stop.set()
    await task
    return [(arrivals[eid] - at) * 1000 for eid, at in appended.items()]


async def memory(redis: aioredis.Redis) -> dict[str, int]:
    key = Store(redis, STORE).events_key
    return {
        "outbox_entries": await redis.xlen(key),
        "outbox_bytes": await redis.memory_usage(key, samples=0) or 0,
        "used_memory": int((await redis.info("memory"))["used_memory"]),
        "keys": await redis.dbsize(),
    }


def shown(m: dict[str, int]) -> str:
    return (
        f"outbox {m['outbox_entries']:>7} entries, {m['outbox_bytes'] / 2**20:5.1f} MiB "
        f"(MEMORY USAGE); used_memory {m['used_memory'] / 2**20:6.1f} MiB, {m['keys']} keys"
    )


async def state_with_one_down(
    redis: aioredis.Redis, receiver: Receiver, events: int
) -> dict[str, Any]:
    await redis.flushdb()
    await receiver.reset()
    healthy = subscription("healthy", receiver.url(0), concurrency=50)
    down = subscription("down", receiver.url(1))
    found = dispatcher(redis, [healthy, down])
    stop = asyncio.Event()
    await found.prepare(stop)  # both groups exist ...
    await found.apply([healthy, down.model_copy(update={"enabled": False})])  # ... one stops
    task = asyncio.create_task(found.run(stop))
    states = {"empty": await memory(redis)}
    print(f"  empty:                          {shown(states['empty'])}")
    store = Store(redis, STORE)
    started = time.perf_counter()
    jobs = new_jobs(events)
    for i in range(0, events, 1000):
        await store.observe(Observation(job) for job in jobs[i : i + 1000])
    appended = time.perf_counter() - started
    await receiver.wait_for(events, within=600)
    delivered = time.perf_counter() - started
    for _ in range(200):  # the last acknowledgements
        if not (await backlog(redis, found.outbox_keys, "healthy"))["events"]:
            break
        await asyncio.sleep(0.05)
    await found.trimmer.trim_once()
    print(f"  appended {events} in {appended:.1f} s; healthy had them all after {delivered:.1f} s")
    owed = (await backlog(redis, found.outbox_keys, "down"))["events"]
    print(f"  down owes {owed} event(s), healthy owes "
          f"{(await backlog(redis, found.outbox_keys, 'healthy'))['events']}")  # fmt: skip
    states["after a trim pass"] = await memory(redis)
    print(f"  after a trim pass:              {shown(states['after a trim pass'])}")
    await found.apply([healthy])  # `down` removed: its groups deleted
    found.trimmer.retention = 0.0  # (the config's minimum is 1h; the bench does not wait)
    await found.trimmer.trim_once()
    states["down removed, trim at 0 s"] = await memory(redis)
    print(f"  down removed, trim at 0 s:      {shown(states['down removed, trim at 0 s'])}")
    stop.set()
    await task
    return {"appended_s": appended, "delivered_s": delivered, "down_owes": owed, **states}


async def main(events: int) -> None:
    harness.quiet_logs()
    redis = open_redis(harness.REDIS_URL)
    machine = await harness.describe_machine(redis)
    hole, hole_url = black_hole()
    try:
        async with harness.receiver() as receiver:
            healthy = subscription("healthy", receiver.url(0))
            hole_sub = subscription("black-hole", hole_url, timeout="30s")
            print(f"Healthy subscription latency, {LATENCY_RATE} events/s for {LATENCY_SECONDS} s:")
            alone = percentiles(await latency(redis, receiver, [healthy]))
            print(f"  alone:                   {show(alone)}")
            beside = percentiles(await latency(redis, receiver, [healthy, hole_sub]))
            print(f"  beside a black hole:     {show(beside)}")
            print(f"State after {events} events with one subscription down:")
            state = await state_with_one_down(redis, receiver, events)
    finally:
        hole.close()
        await redis.flushdb()
        await redis.aclose()
    harness.write_results(
        "isolation",
        machine,
        {
            "settings": {"latency_rate": LATENCY_RATE, "latency_seconds": LATENCY_SECONDS},
            "latency_ms": {"alone": alone, "beside a black hole": beside},
            "one_subscription_down": {"events": events, **state},
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    asyncio.run(main(parser.parse_args().events))
