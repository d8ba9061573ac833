"""Benchmark: signed webhook deliveries per second beside a bare aiohttp loop, by subscriptions.

Run: `python bench/webhook_throughput.py` (Redis at REDIS_URL is flushed at start and end).
Prints numbers, asserts nothing; writes bench/results/webhook_throughput.{json,png}.

The receiver runs in a process of its own (so it does not share the event loop it is measuring)
and answers 204 at once; it checks the signature of every 50th signed request. For each
subscription count, in the same run and on the same bodies:
- bare: plain aiohttp POSTs, one session per destination, CONCURRENCY requests in flight per
  destination (the subscription default, which is what the dispatcher allows);
- sink alone: the bridge's WebhookSink (signing, guarded session, answer handling) driven the
  same way, without Redis or the dispatcher;
- bridge: EVENTS events are appended to the outbox first, then the dispatcher drains it to one
  WebhookSink per subscription; the clock runs from its start until the receiver has every
  delivery.
CPU is this process's (the bridge run's includes polling the receiver's count; Redis's own CPU
is not counted). Then latency: events appended one by one at a steady rate while the dispatcher
runs; append time (before `observe`) to arrival at the receiver.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import harness
import redis.asyncio as aioredis
from harness import ACCENT_COLOUR, BRIDGE_COLOUR, PEER_COLOUR

from bridge.app import Bridge, open_redis
from bridge.events import encode, event_id
from bridge.jobs import Job
from bridge.sinks.base import SinkContext
from bridge.sinks.registry import build_sink
from bridge.store import Observation, Store, event_from_outbox

STORE = "bench"
EVENTS = harness.quick(2_000, 500)
SUBSCRIPTION_COUNTS = (1, 2, 5, 10)
REPEATS = harness.quick(3, 1)
CONCURRENCY = 10
TARGET_RATIO = 0.8  # of the bare loop's rate (issue: delivery at the speed of the wire)
TARGET_RATE = 5_000  # deliveries per second on the 2-core machine
LATENCY_RATE = 200  # events per second
LATENCY_SECONDS = harness.quick(5.0, 2.0)
PEERS = ("bare", "sink alone", "bridge")
COLOURS = {"bare": PEER_COLOUR, "sink alone": ACCENT_COLOUR, "bridge": BRIDGE_COLOUR}


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


async def fill_outbox(redis: aioredis.Redis, count: int) -> list[dict[str, Any]]:
    """Append `count` events; the events the dispatcher will send."""
    store = Store(redis, STORE)
    jobs = new_jobs(count)
    for i in range(0, count, 500):
        await store.observe(Observation(job) for job in jobs[i : i + 500])
    return [event_from_outbox(fields) for _, fields in await redis.xrange(store.events_key)]


async def concurrently(
    destinations: int, events: list[dict[str, Any]], send: Callable[[int, Any], Awaitable[None]]
) -> None:
    """`send(destination, event)` for every event and destination, CONCURRENCY per destination."""

    async def worker(destination: int, queue: list[Any]) -> None:
        while queue:
            await send(destination, queue.pop())

    queues = [list(events) for _ in range(destinations)]
    await asyncio.gather(
        *(worker(d, queues[d]) for d in range(destinations) for _ in range(CONCURRENCY))
    )


async def bare_run(
    rx: harness.Receiver, events: list[dict[str, Any]], destinations: int
) -> harness.Stopwatch:
    """Time for plain aiohttp to POST every body to every destination."""
    await rx.reset()
    bodies = {e["id"]: encode(e) for e in events}
    sessions = [aiohttp.ClientSession() for _ in range(destinations)]
    headers = {"content-type": "application/json"}

    async def send(destination: int, event: dict[str, Any]) -> None:
        async with sessions[destination].post(
            rx.url(destination), data=bodies[event["id"]], headers=headers
        ) as response:
            await response.read()

    watch = harness.Stopwatch()
    await concurrently(destinations, events, send)
    watch.stop()
    for session in sessions:
        await session.close()
    await rx.wait_for(len(events) * destinations)
    return watch


async def sink_run(
    rx: harness.Receiver, events: list[dict[str, Any]], destinations: int
) -> harness.Stopwatch:
    """Time for the bridge's WebhookSink alone (no Redis, no dispatcher) to do the same."""
    await rx.reset()
    config = harness.bridge_config(STORE, [rx.url(n) for n in range(destinations)])
    sinks = [
        build_sink(sub, SinkContext(None, config.subscription_allows_private(sub)))
        for sub in config.subscriptions
    ]
    for sink in sinks:
        await sink.start()

    bodies = {e["id"]: encode(e) for e in events}

    async def send(destination: int, event: dict[str, Any]) -> None:
        result = await sinks[destination].deliver(event, bodies[event["id"]])
        if not result.ok:
            raise RuntimeError(f"delivery failed: {result.reason}")

    watch = harness.Stopwatch()
    await concurrently(destinations, events, send)
    watch.stop()
    for sink in sinks:
        await sink.close()
    await rx.wait_for(len(events) * destinations)
    return watch


async def bridge_run(
    redis: aioredis.Redis, rx: harness.Receiver, destinations: int
) -> harness.Stopwatch:
    """Time for the dispatcher to drain EVENTS outbox entries to every subscription."""
    await redis.flushdb()
    await rx.reset()
    bridge = Bridge(harness.bridge_config(STORE, [rx.url(n) for n in range(destinations)]), redis)
    stop = asyncio.Event()
    await bridge.dispatcher.prepare(stop)  # consumer groups first: they start at the outbox's end
    await fill_outbox(redis, EVENTS)
    watch = harness.Stopwatch()
    task = asyncio.create_task(bridge.dispatcher.run(stop))
    await rx.wait_for(EVENTS * destinations)
    watch.stop()
    stop.set()
    await task
    for client in bridge.clients.values():
        await client.close()
    return watch


async def append_steadily(store: Store, count: int, rate: float) -> dict[str, float]:
    """`count` new jobs' events appended one by one, `rate` per second: event id -> when
    (epoch seconds, taken before the append)."""
    appended: dict[str, float] = {}
    begin = time.monotonic()
    for i, job in enumerate(new_jobs(count)):
        delay = begin + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        appended[event_id(store.name, "pcm", job.id, "pending")] = time.time()
        await store.observe([Observation(job)])
    return appended


async def latency_run(redis: aioredis.Redis, rx: harness.Receiver) -> list[float]:
    """Milliseconds from outbox append to arrival, for events appended at a steady rate."""
    await redis.flushdb()
    await rx.reset()
    store = Store(redis, STORE)
    bridge = Bridge(harness.bridge_config(STORE, [rx.url()]), redis)
    stop = asyncio.Event()
    await bridge.dispatcher.prepare(stop)
    task = asyncio.create_task(bridge.dispatcher.run(stop))
    await asyncio.sleep(0.5)  # the lanes' first reads under way
    total = int(LATENCY_RATE * LATENCY_SECONDS)
    appended = await append_steadily(store, total, LATENCY_RATE)
    await rx.wait_for(total)
    stop.set()
    await task
    for client in bridge.clients.values():
        await client.close()
    arrivals = await rx.arrivals()
    return [(arrivals[eid] - at) * 1000 for eid, at in appended.items()]


Runs = dict[int, dict[str, dict[str, list[float]]]]  # subscriptions -> peer -> measure -> runs


async def measure(redis: aioredis.Redis, rx: harness.Receiver) -> Runs:
    """Deliveries per second and CPU microseconds per delivery of each peer, every repeat."""
    runs: Runs = {n: {p: {"rate": [], "cpu_us": []} for p in PEERS} for n in SUBSCRIPTION_COUNTS}
    await redis.flushdb()
    events = await fill_outbox(redis, EVENTS)
    for repeat in range(REPEATS):
        for n in SUBSCRIPTION_COUNTS:
            deliveries = EVENTS * n
            for peer, watch in (
                ("bare", await bare_run(rx, events, n)),
                ("sink alone", await sink_run(rx, events, n)),
                ("bridge", await bridge_run(redis, rx, n)),
            ):
                runs[n][peer]["rate"].append(deliveries / watch.wall)
                runs[n][peer]["cpu_us"].append(watch.cpu / deliveries * 1e6)
            row = {p: (runs[n][p]["rate"][-1], runs[n][p]["cpu_us"][-1]) for p in PEERS}
            print(
                f"  #{repeat + 1} {n:>2} subscriptions: "
                + ", ".join(f"{p} {r:,.0f}/s ({cpu:.0f} us CPU)" for p, (r, cpu) in row.items())
                + f"; bridge:bare {row['bridge'][0] / row['bare'][0]:.2f}"
            )
    return runs


def draw(runs: Runs) -> Any:
    def bars(axis: Any, measure: str, best: Any) -> None:
        width = 0.27
        for i, peer in enumerate(PEERS):
            for k, n in enumerate(SUBSCRIPTION_COUNTS):
                values = runs[n][peer][measure]
                x = k + (i - 1) * width
                label = peer if k == 0 else None
                axis.bar(x, best(values), width, color=COLOURS[peer], label=label)
                axis.scatter([x] * len(values), values, color="black", s=8, zorder=3)
        axis.set_xticks(range(len(SUBSCRIPTION_COUNTS)), [str(n) for n in SUBSCRIPTION_COUNTS])
        axis.set_xlabel("subscriptions")
        axis.set_ylim(0, axis.get_ylim()[1] * 1.12)
        axis.legend(fontsize=8, loc="upper left")

    def panels(axes: Any) -> None:
        rate, cpu = axes
        bars(rate, "rate", max)
        for k, n in enumerate(SUBSCRIPTION_COUNTS):
            ratio = max(runs[n]["bridge"]["rate"]) / max(runs[n]["bare"]["rate"])
            top = max(max(runs[n][p]["rate"]) for p in PEERS)
            rate.annotate(f"{ratio:.2f}x", (k + 0.27, top), ha="center", va="bottom", fontsize=8)
        for k, n in enumerate(SUBSCRIPTION_COUNTS):  # the targets
            goal = TARGET_RATIO * max(runs[n]["bare"]["rate"])
            label = f"target: {TARGET_RATIO}x bare" if k == 0 else None
            rate.hlines(goal, k - 0.45, k + 0.45, colors="black", linestyles="dotted", label=label)
        rate.axhline(TARGET_RATE, color="red", linestyle="dashed", linewidth=0.8,
                     label=f"target: {TARGET_RATE:,}/s")  # fmt: skip
        rate.legend(fontsize=8, loc="upper left")
        rate.set_title("deliveries per second (labels: bridge / bare, best runs)", fontsize=9)
        rate.set_ylabel("signed deliveries per second (bars: best; dots: each run)")
        bars(cpu, "cpu_us", min)
        cpu.set_title("CPU of the sending process per delivery (lower is better)", fontsize=9)
        cpu.set_ylabel("microseconds (bars: best; dots: each run)")

    return panels


async def main() -> None:
    harness.quiet_logs()
    redis = open_redis(harness.REDIS_URL)  # the bridge's own client (a blocking pool)
    machine = await harness.describe_machine(redis)
    print(
        f"webhook throughput: {EVENTS:,} events per run, {CONCURRENCY} in flight per "
        f"destination, {REPEATS} repeats; receiver in its own process"
    )
    try:
        async with harness.receiver() as rx:
            runs = await measure(redis, rx)
            latencies = await latency_run(redis, rx)
    finally:
        await redis.flushdb()
        await redis.aclose()
    summary = {
        n: {
            p: {
                "deliveries_per_second": harness.spread(runs[n][p]["rate"]),
                "cpu_us_per_delivery": harness.spread(runs[n][p]["cpu_us"], higher_is_better=False),
            }
            for p in PEERS
        }
        for n in SUBSCRIPTION_COUNTS
    }
    for n in SUBSCRIPTION_COUNTS:
        for p in PEERS:
            rate = harness.show_spread(summary[n][p]["deliveries_per_second"])
            cpu = harness.show_spread(summary[n][p]["cpu_us_per_delivery"])
            print(f"{n:>2} subscriptions, {p:<10}: {rate} deliveries/s; CPU {cpu} us/delivery")
    latency = {
        "p50": statistics.median(latencies),
        "p99": harness.percentile(latencies, 99),
        "max": max(latencies),
    }
    print(
        f"latency, outbox append -> receipt, {LATENCY_RATE} events/s for {LATENCY_SECONDS:g} s "
        f"({len(latencies)} events, 1 subscription): p50 {latency['p50']:.1f} ms, "
        f"p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms"
    )
    harness.write_results(
        "webhook_throughput",
        machine,
        {
            "settings": {"events": EVENTS, "concurrency": CONCURRENCY, "repeats": REPEATS},
            "by_subscriptions": summary,
            "append_to_receipt_ms": latency,
        },
    )
    harness.plot(
        "webhook_throughput",
        machine,
        "Signed webhook deliveries per second: bridge, its sink alone, and a bare aiohttp loop",
        draw(runs),
        panels=2,
    )


if __name__ == "__main__":
    asyncio.run(main())
