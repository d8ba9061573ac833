"""Benchmark: change -> webhook receipt latency through the whole bridge, and where the time goes.

Run: `python bench/latency.py` (Redis at REDIS_URL is flushed at start and end). The simulated
Jobs API runs in a process of its own with steady traffic (jobs created, started, finished or
failed, as `jobs-bridge demo` shows them); the receiver in another. The bridge runs here as
`jobs-bridge run` would, with `poll_interval: 1s` and `max_requests_per_second: 10`.

A change happens at the job's own timestamp for its status (created_at, started_at,
completed_at); its event reaches the outbox at the entry id's time and the receiver at its
arrival. So each event's latency splits into: waiting for the next poll cycle to start, the
cycle's work until the event is in the outbox (requests, a failed job's /errors, Redis), and
the dispatcher's part (outbox -> receipt).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import statistics
import time
from datetime import datetime
from typing import Any

import harness
from harness import ACCENT_COLOUR, BRIDGE_COLOUR, PEER_COLOUR, percentile

from bridge.app import Bridge, open_redis
from bridge.poller import Poller

POLL_INTERVAL = 1.0
RATE_LIMIT = 10
TRAFFIC = 3.0  # new jobs per second
SECONDS = harness.quick(45.0, 15.0)
HISTORY = 1000
TARGET_MS = POLL_INTERVAL * 1000 + 250
STORE = "latency"
CHANGE_STAMP = {
    "pending": "created_at",
    "started": "started_at",
    "success": "completed_at",
    "failed": "completed_at",
    "cancelled": "completed_at",
}
PARTS = ("wait for the poll", "poll cycle -> outbox", "outbox -> receipt (dispatch)")


def record_cycles(poller: Poller) -> list[tuple[float, Any]]:
    """(epoch seconds at which it began, its report) of each of the poller's cycles."""
    cycles: list[tuple[float, Any]] = []
    cycle = poller.cycle

    async def timed() -> Any:
        started = time.time()
        report = await cycle()
        cycles.append((started, report))
        return report

    poller.cycle = timed  # type: ignore[method-assign]
    return cycles


async def run_bridge(sim: harness.SimulatorClient, rx: harness.Receiver) -> dict[str, Any]:
    """Run the bridge against the traffic; the raw material of the analysis."""
    redis = open_redis(harness.REDIS_URL)
    await redis.flushdb()
    try:
        config = harness.bridge_config(
            STORE,
            [rx.url()],
            api_base=sim.base,
            poll_interval=f"{POLL_INTERVAL:g}s",
            max_requests_per_second=RATE_LIMIT,
        )
        bridge = Bridge(config, redis)
        cycles = record_cycles(bridge.pollers[0])
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        await harness.wait_for_baseline(bridge.stores[STORE])
        await rx.reset(keep=True)
        requests_before = bridge.clients[STORE].requests
        since = time.time()
        await asyncio.sleep(SECONDS)
        until = time.time()
        requests = bridge.clients[STORE].requests - requests_before
        await sim.control("traffic", {"rate": 0})
        await asyncio.sleep(POLL_INTERVAL * 3)  # the last changes observed and delivered
        stop.set()
        await task
        entries = await redis.xrange(bridge.stores[STORE].events_key)
        return {
            "since": since,
            "until": until,
            "starts": [started for started, _ in cycles],
            "reports": [report for started, report in cycles if since <= started <= until],
            "requests": requests,
            "appended": {f["id"]: int(entry.split("-")[0]) / 1000 for entry, f in entries},
            "arrivals": await rx.arrivals(),
        }
    finally:
        await redis.flushdb()
        await redis.aclose()


def split(raw: dict[str, Any]) -> tuple[list[dict[str, float]], int]:
    """Each measured event's latency and its parts (ms); and events never received."""
    starts = sorted(raw["starts"])
    events = []
    for event_id, appended in raw["appended"].items():
        arrival = raw["arrivals"].get(event_id)
        if arrival is None:
            continue
        received, body = arrival
        data = json.loads(body)["data"]
        stamp = data["job"].get(CHANGE_STAMP.get(data["status"], ""), None)
        if stamp is None:
            continue
        changed = datetime.fromisoformat(stamp).timestamp()
        if not raw["since"] <= changed <= raw["until"]:
            continue
        cycle = starts[max(0, bisect.bisect_right(starts, appended) - 1)]
        events.append(
            {
                "total": (received - changed) * 1000,
                PARTS[0]: max(0.0, cycle - changed) * 1000,
                PARTS[1]: (appended - max(cycle, changed)) * 1000,
                PARTS[2]: (received - appended) * 1000,
                "status": data["status"],
            }
        )
    missing = sum(
        1
        for event_id, appended in raw["appended"].items()
        if appended >= raw["since"] and event_id not in raw["arrivals"]
    )
    return events, missing


def summarise(events: list[dict[str, Any]], raw: dict[str, Any]) -> dict[str, Any]:
    def quantiles(values: list[float]) -> dict[str, float]:
        return {
            "p50": statistics.median(values),
            "p90": percentile(values, 90),
            "p99": percentile(values, 99),
            "max": max(values),
        }

    starts = [s for s in raw["starts"] if raw["since"] <= s <= raw["until"]]
    periods = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    failed = [e["total"] for e in events if e["status"] == "failed"]
    return {
        "events": len(events),
        "total_ms": quantiles([e["total"] for e in events]),
        "parts_ms": {part: quantiles([e[part] for e in events]) for part in PARTS},
        "failed_events_ms": quantiles(failed) if failed else None,
        "cycle_period_ms": quantiles(periods) if periods else None,
        "api_requests_per_second": raw["requests"] / (raw["until"] - raw["since"]),
    }


def report(summary: dict[str, Any], missing: int) -> None:
    def row(name: str, q: dict[str, float] | None) -> None:
        if q is not None:
            print(
                f"  {name:<32} p50 {q['p50']:>7.1f}  p90 {q['p90']:>7.1f}  "
                f"p99 {q['p99']:>7.1f}  max {q['max']:>7.1f} ms"
            )

    print(
        f"\n{summary['events']} events measured ({missing} never received); API requests "
        f"{summary['api_requests_per_second']:.1f}/s (budget {RATE_LIMIT}/s)"
    )
    row("change -> receipt", summary["total_ms"])
    for part in PARTS:
        row(f"  {part}", summary["parts_ms"][part])
    row("failed jobs' events (/errors)", summary["failed_events_ms"])
    row("poll cycle start -> next start", summary["cycle_period_ms"])
    p99 = summary["total_ms"]["p99"]
    verdict = "within" if p99 <= TARGET_MS else "over"
    print(f"  target: p99 <= {TARGET_MS:.0f} ms (poll interval + 250 ms): {verdict}")


def draw(events: list[dict[str, Any]], summary: dict[str, Any]) -> Any:
    totals = [e["total"] for e in events]

    def panels(axes: Any) -> None:
        left, right = axes
        left.hist(totals, bins=40, color=BRIDGE_COLOUR)
        q = summary["total_ms"]
        for x, label, colour, style in (
            (POLL_INTERVAL * 1000, "poll interval", PEER_COLOUR, "--"),
            (TARGET_MS, "target for p99", ACCENT_COLOUR, "--"),
            (q["p99"], "p99", "black", ":"),
        ):
            left.axvline(x, color=colour, linestyle=style, label=label)
        left.set_title(f"change -> receipt: p50 {q['p50']:.0f} ms, p99 {q['p99']:.0f} ms")
        left.set_xlabel("milliseconds")
        left.set_ylabel("events")
        left.legend(loc="upper right", fontsize=8)
        harness.cdf(right, totals, color=BRIDGE_COLOUR, label="change -> receipt", linewidth=2)
        for part, colour in zip(PARTS, ("#9ecae1", "#2ca02c", ACCENT_COLOUR), strict=True):
            harness.cdf(right, [e[part] for e in events], color=colour, label=part)
        right.set_xscale("symlog", linthresh=10)
        right.set_xlabel("milliseconds (log above 10)")
        right.set_ylabel("fraction of events")
        right.set_title("where the time goes (CDF of each part)")
        right.grid(alpha=0.3)
        right.legend(loc="upper left", fontsize=8)

    return panels


async def main() -> None:
    harness.quiet_logs()
    redis = open_redis(harness.REDIS_URL)
    machine = await harness.describe_machine(redis)
    await redis.aclose()
    print(
        f"change -> receipt latency: poll_interval {POLL_INTERVAL:g}s, max_requests_per_second "
        f"{RATE_LIMIT}, {TRAFFIC:g} new jobs/s for {SECONDS:g} s over {HISTORY:,} finished jobs"
    )
    async with harness.simulator(history=HISTORY, traffic=TRAFFIC) as sim, harness.receiver() as rx:
        raw = await run_bridge(sim, rx)
    events, missing = split(raw)
    summary = summarise(events, raw)
    report(summary, missing)
    harness.write_results(
        "latency",
        machine,
        {
            "settings": {
                "poll_interval_s": POLL_INTERVAL,
                "max_requests_per_second": RATE_LIMIT,
                "traffic_jobs_per_s": TRAFFIC,
                "seconds": SECONDS,
                "history": HISTORY,
            },
            "summary": summary,
            "never_received": missing,
        },
    )
    harness.plot(
        "latency",
        machine,
        f"Change -> webhook receipt, poll_interval {POLL_INTERVAL:g}s, "
        f"{RATE_LIMIT} requests/s ({summary['events']} events)",
        draw(events, summary),
        panels=2,
    )


if __name__ == "__main__":
    asyncio.run(main())
