"""Benchmark: a burst of jobs finishing at once, the bridge beside a bare client, in one run.

Run: `python bench/burst.py` (Redis at REDIS_URL is flushed at start and end). The simulated
Jobs API and the webhook receiver run in processes of their own; the bridge runs here with
`poll_interval: 1s` and `max_requests_per_second: 10`.

Two bursts of BURST jobs (the newest of the store's history):
- `finish`: jobs the bridge has seen started all finish at once (a catalog import fanned out
  into thousands of jobs, completing together);
- `appear`: jobs appear already finished (they ran between two polls).

The bridge's time runs from the moment the simulator has moved the last job until the
receiver has the last event. The bare client then does the least any poller must: read the
pages holding those jobs through the same request budget (a plain aiohttp GET per page, spaced
by the bridge's RateLimiter, token fetched beforehand) and POST every job to the receiver,
CONCURRENCY requests in flight, unsigned. Its time runs from its first GET to the last receipt.
The bridge keeps polling meanwhile (one or two requests a second, on its own budget). Each
burst lands at a random moment of the bridge's poll cycle.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any

import aiohttp
import harness
from harness import BRIDGE_COLOUR, PEER_COLOUR

from bridge.app import Bridge, open_redis
from bridge.elasticpath import RateLimiter

BURST = harness.quick(2000, 500)
REPEATS = harness.quick(3, 1)
HISTORY = 1000
POLL_INTERVAL = 1.0
RATE_LIMIT = 10
CONCURRENCY = 10
PAGE_LIMIT = 100
WITHIN = 60.0  # seconds a burst may take before the run gives up on it
STORE = "burst"
KINDS = ("finish", "appear")
# Each burst lands at a random moment of the poll cycle (seeded: a rerun draws the same).
PHASE = random.Random(13)
DESCRIBED = {"finish": "seen started, finishing at once", "appear": "appearing finished at once"}


async def token(session: aiohttp.ClientSession, sim: harness.SimulatorClient) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    }
    async with session.post(f"{sim.base}/oauth/access_token", data=form) as response:
        return (await response.json())["access_token"]


async def bare_client(sim: harness.SimulatorClient, rx: harness.Receiver, count: int) -> float:
    """Seconds from the first GET to the last receipt, for the pages holding `count` jobs."""
    await rx.reset()
    limiter = RateLimiter(RATE_LIMIT)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    async with aiohttp.ClientSession() as session:
        headers = {"authorization": f"Bearer {await token(session, sim)}"}

        async def read_pages() -> None:
            for page in range(math.ceil(count / PAGE_LIMIT)):
                await limiter.acquire()
                params = {"page[limit]": str(PAGE_LIMIT), "page[offset]": str(page * PAGE_LIMIT)}
                async with session.get(
                    f"{sim.base}/pcm/jobs", params=params, headers=headers
                ) as response:
                    for record in (await response.json())["data"]:
                        queue.put_nowait(record)
            for _ in range(CONCURRENCY):
                queue.put_nowait(None)

        async def post() -> None:
            while (record := await queue.get()) is not None:
                body = json.dumps(record, separators=(",", ":")).encode()
                headers = {"content-type": "application/json", "x-id": record["id"]}
                async with session.post(rx.url(1), data=body, headers=headers) as response:
                    await response.read()

        started = time.time()
        await asyncio.gather(read_pages(), *(post() for _ in range(CONCURRENCY)))
    return await rx.last_arrival() - started


async def bridge_burst(
    kind: str, sim: harness.SimulatorClient, rx: harness.Receiver, bridge: Bridge, count: int
) -> tuple[float, float]:
    """Seconds from the last job's change to the last receipt, and to the last outbox append."""
    if kind == "finish":
        await sim.control("bench/jobs", {"count": count, "status": "started"})
        await rx.wait_for(count, within=WITHIN)  # the bridge has seen them all started
        await asyncio.sleep(POLL_INTERVAL * 2)  # a steady state with BURST open jobs
        await asyncio.sleep(PHASE.uniform(0, POLL_INTERVAL))
        await rx.reset()
        changed = (await sim.control("bench/finish", {"status": "success"}))["at"]
    else:
        await asyncio.sleep(PHASE.uniform(0, POLL_INTERVAL))
        await rx.reset()
        changed = (await sim.control("bench/jobs", {"count": count, "status": "success"}))["at"]
    await rx.wait_for(count, within=WITHIN)
    events_key = bridge.stores[STORE].events_key
    [(last, _fields)] = await bridge.redis.xrevrange(events_key, count=1)
    appended = int(last.split("-")[0]) / 1000
    return await rx.last_arrival() - changed, appended - changed


async def run(sim: harness.SimulatorClient, rx: harness.Receiver) -> dict[str, Any]:
    redis = open_redis(harness.REDIS_URL)
    await redis.flushdb()
    config = harness.bridge_config(
        STORE,
        [rx.url(0)],
        api_base=sim.base,
        poll_interval=f"{POLL_INTERVAL:g}s",
        max_requests_per_second=RATE_LIMIT,
    )
    bridge = Bridge(config, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    results = {kind: {"bridge": [], "outbox": [], "bare": [], "ratio": []} for kind in KINDS}
    try:
        await harness.wait_for_baseline(bridge.stores[STORE])
        for repeat in range(REPEATS):
            for kind in KINDS:
                row = results[kind]
                try:
                    seconds, appended = await bridge_burst(kind, sim, rx, bridge, BURST)
                except RuntimeError as exc:
                    print(f"  {kind} #{repeat + 1}: {exc}")
                    continue
                row["bridge"].append(seconds)
                row["outbox"].append(appended)
                row["bare"].append(await bare_client(sim, rx, BURST))
                row["ratio"].append(row["bridge"][-1] / row["bare"][-1])
                print(
                    f"  {kind:<7} #{repeat + 1}: bridge {seconds:6.2f} s (last in the outbox "
                    f"after {appended:.2f} s), bare {row['bare'][-1]:6.2f} s, ratio "
                    f"{row['ratio'][-1]:.2f}"
                )
    finally:
        stop.set()
        await task
        await redis.flushdb()
        await redis.aclose()
    return results


def draw(results: dict[str, Any]) -> Any:
    def panels(axes: Any) -> None:
        for axis, kind in zip(axes, KINDS, strict=True):
            row = results[kind]
            if not row["bridge"]:
                continue
            axis.bar(0, min(row["bare"]), 0.6, color=PEER_COLOUR)
            # The bridge's best run, split where its last event entered the outbox.
            best = row["bridge"].index(min(row["bridge"]))
            polled = row["outbox"][best]
            axis.bar(
                1,
                polled,
                0.6,
                color=BRIDGE_COLOUR,
                label="poll until the last event is in the outbox",
            )
            axis.bar(
                1, row["bridge"][best] - polled, 0.6, bottom=polled, color="#9ecae1",
                label="dispatch: outbox -> last receipt",
            )  # fmt: skip
            for x, who in ((0, "bare"), (1, "bridge")):
                axis.scatter([x] * len(row[who]), row[who], color="black", s=10, zorder=3)
            axis.legend(fontsize=8, loc="upper left")
            axis.set_xticks(
                [0, 1],
                ["bare client\n(read pages, POST)", "jobs-bridge\n(poll, Redis, dispatch, sign)"],
            )
            ratio = f": {min(row['ratio']):.2f}x the bare client (best)" if row["ratio"] else ""
            axis.set_title(f"{BURST:,} jobs {DESCRIBED[kind]}{ratio}", fontsize=9)
            axis.set_ylabel("seconds to the last receipt (bars: best; dots: each run)")

    return panels


async def main() -> None:
    harness.quiet_logs()
    redis = open_redis(harness.REDIS_URL)
    machine = await harness.describe_machine(redis)
    await redis.aclose()
    print(
        f"burst: {BURST:,} jobs at once over {HISTORY:,} finished ones, poll_interval "
        f"{POLL_INTERVAL:g}s, {RATE_LIMIT} requests/s, {REPEATS} repeats"
    )
    async with harness.simulator(history=HISTORY) as sim, harness.receiver() as rx:
        results = await run(sim, rx)
    for kind in KINDS:
        row = results[kind]
        if row["ratio"]:
            shown = {
                who: harness.show_spread(harness.spread(row[who], higher_is_better=False), ".2f")
                for who in ("bridge", "bare", "ratio")
            }
            print(f"{kind}: bridge {shown['bridge']} s, bare {shown['bare']} s, {shown['ratio']}")
    settings = {"burst": BURST, "history": HISTORY, "poll_interval_s": POLL_INTERVAL}
    settings |= {"max_requests_per_second": RATE_LIMIT, "concurrency": CONCURRENCY}
    harness.write_results("burst", machine, {"settings": settings, "seconds": results})
    harness.plot(
        "burst",
        machine,
        f"{BURST:,} jobs at once: time to deliver, bridge beside a bare client "
        f"({RATE_LIMIT} requests/s)",
        draw(results),
        panels=2,
    )


if __name__ == "__main__":
    asyncio.run(main())
