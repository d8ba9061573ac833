"""Benchmark: API requests and time per steady-state poll cycle, the bridge beside a naive poller.

Run: `python bench/poll_cost.py [--slow]` (Redis at REDIS_URL, default redis://127.0.0.1:6379/14,
is flushed at start and end); writes bench/results/poll_cost.{json,png}. The simulator serves
in-process on 127.0.0.1; the client is limited to 100 requests/s, so the time of a cycle is
mostly its request count / 100.

In `shuffled` order the simulator re-shuffles every PCM job on every list request (~45 ms of CPU
at 100,000 jobs), and a cycle hunting a new job may read every page: that row at 100,000 jobs
takes about a minute, so it runs only with `--slow`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import harness
import redis.asyncio as aioredis
from aiohttp import web
from harness import BRIDGE_COLOUR, PEER_COLOUR

from bridge.elasticpath import ElasticPathClient
from bridge.jobs import parse_pcm_job
from bridge.poller import Poller, PollSettings
from bridge.simulator import TOKEN_ROUTE, Simulator, make_app
from bridge.store import Store

REDIS_URL = harness.REDIS_URL
HISTORY_SIZES = harness.quick((1_000, 10_000, 100_000), (1_000, 10_000))
OPEN_JOBS = 20  # half pending, half started
CHANGE_CYCLES = 5  # each after three status changes: pending->started, ->success, ->failed
NEW_JOB_CYCLES = 2  # each after one new job and one completion
RATE = 100.0
PAGE_LIMIT = 100
# No safety-net full scan during the measured cycles: only the incremental path is measured.
SETTINGS = PollSettings(full_scan_interval=1e9, page_limit=PAGE_LIMIT)
THREE_CHANGES = (("pending", "started"), ("started", "success"), ("started", "failed"))
NEW_AND_DONE = (("new", "pending"), ("started", "success"))
SLOW_ABOVE = 10_000  # shuffled new-job cycles above this history size need --slow


@dataclass
class Row:
    history: int
    order: str
    poller: str
    cycle: str
    sim_requests: list[int] = field(default_factory=list)
    report_requests: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    fetched: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    missed: int | str = "-"


def api_requests(sim: Simulator) -> int:
    """Requests to the Jobs endpoints the simulator has answered (token requests aside)."""
    return sum(count for route, count in sim.requests.items() if route != TOKEN_ROUTE)


def oldest_with_status(sim: Simulator, status: str) -> str:
    candidates = [j for j in sim.jobs.values() if j.source == "pcm" and j.status == status]
    return min(candidates, key=lambda job: job.seq).id


def apply_changes(sim: Simulator, moves: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Move open jobs (or create new ones); returns job id -> the status the bridge should see."""
    expected = {}
    for current, target in moves:
        if current == "new":
            job_id = sim.create_job(status=target)
        else:
            job_id = oldest_with_status(sim, current)
            if target == "failed":
                sim.add_errors(job_id, ["row 3: slug must be URL compatible."])
            sim.set_status(job_id, target)
        expected[job_id] = target
    return expected


def top_up_open_jobs(sim: Simulator) -> None:
    """Bring the store back to OPEN_JOBS open jobs, half pending and half started."""
    for status in ("pending", "started"):
        have = sum(1 for j in sim.jobs.values() if j.source == "pcm" and j.status == status)
        for _ in range(OPEN_JOBS // 2 - have):
            sim.create_job(status=status)


async def missed(store: Store, expected: dict[str, str]) -> int:
    """Changes the bridge has not recorded (yet) after the measured cycles."""
    states = await store.states("pcm", list(expected))
    return sum(
        1
        for (_, status), s in zip(expected.items(), states, strict=True)
        if s is None or s.status != status
    )


async def naive_cycle(client: ElasticPathClient) -> int:
    """What a cron script does: read every page, every cycle. Returns the pages read."""
    offset = pages = 0
    while True:
        page = await client.list_pcm_jobs(offset, PAGE_LIMIT)
        for record in page.records:
            parse_pcm_job(record)
        pages += 1
        offset += len(page.records)
        if len(page.records) < PAGE_LIMIT:
            return pages


async def bridge_cycles(
    sim: Simulator,
    poller: Poller,
    row: Row,
    cycles: int,
    moves: tuple[tuple[str, str], ...],
) -> None:
    expected: dict[str, str] = {}
    for _ in range(cycles):
        expected.update(apply_changes(sim, moves))
        before_sim, started = api_requests(sim), time.perf_counter()
        report = await poller.cycle()
        row.seconds.append(time.perf_counter() - started)
        row.sim_requests.append(api_requests(sim) - before_sim)
        row.report_requests.append(report.requests)
        row.pages.append(report.pages)
        row.fetched.append(report.fetched_open)
    row.missed = await missed(poller.store, expected)


async def run_history(redis: aioredis.Redis, history: int, rows: list[Row], slow: bool) -> None:
    sim = Simulator(seed=history)
    sim.bulk_create(history)
    top_up_open_jobs(sim)
    runner = web.AppRunner(make_app(sim), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = ElasticPathClient(
        f"http://{host}:{port}", sim.client_id, sim.client_secret, max_requests_per_second=RATE
    )
    try:
        store = Store(redis, f"bench-{history}")
        poller = Poller(client, store, "pcm", SETTINGS)

        baseline = Row(history, "newest", "bridge", "baseline (once)")
        before, started = api_requests(sim), time.perf_counter()
        report = await poller.cycle()
        baseline.seconds.append(time.perf_counter() - started)
        baseline.sim_requests.append(api_requests(sim) - before)
        baseline.report_requests.append(report.requests)
        baseline.pages.append(report.pages)
        baseline.fetched.append(report.fetched_open)
        rows.append(baseline)

        naive = Row(history, "any", "naive", "any")
        before, started = api_requests(sim), time.perf_counter()
        pages = await naive_cycle(client)
        naive.seconds.append(time.perf_counter() - started)
        naive.sim_requests.append(api_requests(sim) - before)
        naive.report_requests.append(pages)
        naive.pages.append(pages)
        naive.fetched.append(0)
        rows.append(naive)

        for order in ("newest", "shuffled"):
            sim.configure(order="newest")
            top_up_open_jobs(sim)
            await poller.cycle()  # absorbs the top-up; not measured
            sim.configure(order=order)
            changes = Row(history, order, "bridge", "3 status changes")
            await bridge_cycles(sim, poller, changes, CHANGE_CYCLES, THREE_CHANGES)
            rows.append(changes)
            if order == "shuffled" and history > SLOW_ABOVE and not slow:
                print(f"  {history:>7,} jobs: shuffled '1 new job' cycles skipped (use --slow)")
                continue
            new_job = Row(history, order, "bridge", "1 new job + 1 done")
            await bridge_cycles(sim, poller, new_job, NEW_JOB_CYCLES, NEW_AND_DONE)
            rows.append(new_job)
        expected_pages = math.ceil(len(sim.jobs) / PAGE_LIMIT)
        print(f"  {history:>7,} jobs: naive pages per cycle = ceil(total/100) = {expected_pages}")
        print(f"  {history:>7,} jobs: tokens issued in the whole run = {sim.tokens_issued}")
    finally:
        await client.close()
        await runner.cleanup()


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'history':>8} {'order':>8} {'poller':>6} {'cycle':<19} {'n':>2} "
        f"{'req/cyc sim':>11} {'req/cyc report':>14} {'max':>5} {'pages':>6} "
        f"{'fetched':>7} {'ms/cycle':>9} {'missed':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.history:>8,} {row.order:>8} {row.poller:>6} {row.cycle:<19} "
            f"{len(row.sim_requests):>2} {statistics.mean(row.sim_requests):>11.1f} "
            f"{statistics.mean(row.report_requests):>14.1f} {max(row.sim_requests):>5} "
            f"{statistics.mean(row.pages):>6.1f} {statistics.mean(row.fetched):>7.1f} "
            f"{statistics.mean(row.seconds) * 1000:>9.0f} {row.missed!s:>6}"
        )


LINES = (  # (poller, order, cycle), style
    (("naive", "any", "any"), {"color": PEER_COLOUR, "marker": "s", "linewidth": 2}),
    (("bridge", "newest", "baseline (once)"), {"color": BRIDGE_COLOUR, "linestyle": ":"}),
    (("bridge", "newest", "3 status changes"), {"color": BRIDGE_COLOUR, "marker": "o"}),
    (("bridge", "newest", "1 new job + 1 done"), {"color": BRIDGE_COLOUR, "marker": "^"}),
    (("bridge", "shuffled", "3 status changes"), {"color": "#2ca02c", "marker": "o"}),
    (("bridge", "shuffled", "1 new job + 1 done"), {"color": "#2ca02c", "marker": "^"}),
)


def draw(rows: list[Row]) -> Any:
    def panel(axis: Any) -> None:
        for (poller, order, cycle), style in LINES:
            points = [
                (row.history, statistics.mean(row.sim_requests))
                for row in rows
                if (row.poller, row.order, row.cycle) == (poller, order, cycle)
            ]
            if not points:
                continue
            label = "naive poller (every page)" if poller == "naive" else f"{order}: {cycle}"
            axis.plot(*zip(*points, strict=True), label=label, **style)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("jobs in the store's history")
        axis.set_ylabel("API requests per cycle (mean)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8, title="bridge, list order: cycle", title_fontsize=8)

    return panel


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also the ~1 minute shuffled row")
    slow = parser.parse_args().slow
    harness.quiet_logs()
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    machine = await harness.describe_machine(redis)
    await redis.flushdb()
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        print(
            f"poll cost: {OPEN_JOBS} open jobs, client at {RATE:g} req/s, page limit {PAGE_LIMIT}"
        )
        for history in HISTORY_SIZES:
            await run_history(redis, history, rows, slow)
    finally:
        await redis.flushdb()
        await redis.aclose()
    print()
    print_table(rows)
    print()
    print("req/cyc report = CycleReport.requests (the naive row: pages read); missed = changes")
    print("not yet recorded after the row's cycles. The naive row only reads and parses pages.")
    print(f"total run time {time.perf_counter() - started:.1f} s")
    harness.write_results(
        "poll_cost",
        machine,
        {
            "settings": {"open_jobs": OPEN_JOBS, "rate": RATE, "page_limit": PAGE_LIMIT},
            "rows": [asdict(row) for row in rows],
        },
    )
    harness.plot(
        "poll_cost",
        machine,
        f"API requests per poll cycle vs history size ({OPEN_JOBS} open jobs, pages of "
        f"{PAGE_LIMIT})",
        draw(rows),
    )


if __name__ == "__main__":
    asyncio.run(main())
