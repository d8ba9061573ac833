"""Benchmark: isolation and bounded state of delivery (issue 9).

Run: `python bench/isolation.py [--events 100000]` (Redis at REDIS_URL, default
redis://127.0.0.1:6379/13, is flushed at start and end). Prints numbers, asserts nothing.

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
import logging
import multiprocessing
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog

sys.path.insert(0, str(Path(__file__).parent))
from webhook_throughput import (
    REDIS_URL,
    SECRET,
    STORE,
    ReceiverClient,
    new_jobs,
    serve_receiver,
)

from bridge.app import open_redis
from bridge.dispatcher import Dispatcher
from bridge.events import event_id
from bridge.outbox import backlog
from bridge.sinks.base import SinkContext
from bridge.sinks.registry import build_sink
from bridge.sinks.webhook import WebhookSubscription
from bridge.store import Observation, Store

LATENCY_RATE = 100  # events per second
LATENCY_SECONDS = 10.0


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


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered):6.1f} ms  p99 {p99:6.1f} ms  "
        f"max {ordered[-1]:6.1f} ms  (n={len(ordered)})"
    )


async def latency(
    redis: aioredis.Redis, receiver: ReceiverClient, subs: list[WebhookSubscription]
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
    jobs = new_jobs(total)
    appended: dict[str, float] = {}
    begin = time.monotonic()
    for i, job in enumerate(jobs):
        delay = begin + i / LATENCY_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        appended[event_id(STORE, "pcm", job.id, "pending")] = time.time()
        await store.observe([Observation(job)])
    await receiver.wait_for(total)
    arrivals = await receiver.arrivals()
    stop.set()
    await task
    return [(arrivals[eid] - at) * 1000 for eid, at in appended.items()]


async def memory(redis: aioredis.Redis) -> str:
    key = Store(redis, STORE).events_key
    length = await redis.xlen(key)
    usage = await redis.memory_usage(key, samples=0) or 0
    used = (await redis.info("memory"))["used_memory"]
    return (
        f"outbox {length:>7} entries, {usage / 2**20:5.1f} MiB (MEMORY USAGE); "
        f"used_memory {used / 2**20:6.1f} MiB, {await redis.dbsize()} keys"
    )


async def state_with_one_down(redis: aioredis.Redis, receiver: ReceiverClient, events: int) -> None:
    await redis.flushdb()
    await receiver.reset()
    healthy = subscription("healthy", f"{receiver.base}/hook/0", concurrency=50)
    down = subscription("down", f"{receiver.base}/hook/1")
    found = dispatcher(redis, [healthy, down])
    stop = asyncio.Event()
    await found.prepare(stop)  # both groups exist ...
    await found.apply([healthy, down.model_copy(update={"enabled": False})])  # ... one stops
    task = asyncio.create_task(found.run(stop))
    print(f"  empty:                          {await memory(redis)}")
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
    owed = await backlog(redis, found.outbox_keys, "down")
    print(f"  down owes {owed['events']} event(s), healthy owes "
          f"{(await backlog(redis, found.outbox_keys, 'healthy'))['events']}")  # fmt: skip
    print(f"  after a trim pass:              {await memory(redis)}")
    await found.apply([healthy])  # `down` removed: its groups deleted
    found.trimmer.retention = 0.0  # (the config's minimum is 1h; the bench does not wait)
    await found.trimmer.trim_once()
    print(f"  down removed, trim at 0 s:      {await memory(redis)}")
    stop.set()
    await task


async def main(events: int) -> None:
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    port = 18800 + (int(time.time()) % 100)
    process = multiprocessing.Process(target=serve_receiver, args=(port, SECRET), daemon=True)
    process.start()
    receiver = ReceiverClient(f"http://127.0.0.1:{port}")
    redis = open_redis(REDIS_URL)
    hole, hole_url = black_hole()
    try:
        await receiver.wait_ready()
        healthy = subscription("healthy", f"{receiver.base}/hook/0")
        hole_sub = subscription("black-hole", hole_url, timeout="30s")
        print(f"Healthy subscription latency, {LATENCY_RATE} events/s for {LATENCY_SECONDS} s:")
        alone = await latency(redis, receiver, [healthy])
        print(f"  alone:                   {percentiles(alone)}")
        beside = await latency(redis, receiver, [healthy, hole_sub])
        print(f"  beside a black hole:     {percentiles(beside)}")
        print(f"State after {events} events with one subscription down:")
        await state_with_one_down(redis, receiver, events)
    finally:
        hole.close()
        await redis.flushdb()
        await redis.aclose()
        await receiver.close()
        process.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().events))
