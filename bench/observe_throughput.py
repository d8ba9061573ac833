"""Benchmark: observations per second through the observe Lua script, and Redis memory per job.

Run: `python bench/observe_throughput.py` (Redis at REDIS_URL, default redis://127.0.0.1:6379/14,
is flushed at start and end). `Store.observe` is called with batches of 500 (one pipeline each).
Writes bench/results/observe_throughput.{json,png}.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import harness
import redis.asyncio as aioredis
from harness import ACCENT_COLOUR, BRIDGE_COLOUR

from bridge.jobs import Job
from bridge.store import Observation, Store

REDIS_URL = harness.REDIS_URL
JOBS = harness.quick(50_000, 10_000)
REPEATS = harness.quick(3, 1)
BATCH = 500
TARGET = 50_000  # observations per second
CREATED = datetime(2024, 1, 5, 13, 46, 41, 695_000, tzinfo=UTC)


def make_jobs(status: str, ids: list[str], started: bool) -> list[Job]:
    started_at = CREATED + timedelta(seconds=1) if started else None
    completed_at = CREATED + timedelta(seconds=2) if status in ("success", "failed") else None
    return [
        Job(
            id=job_id,
            source="pcm",
            type="product-import",
            status=status,
            created_at=CREATED,
            # As the API does: updated_at moves on start, not on completion.
            updated_at=started_at or CREATED,
            started_at=started_at,
            completed_at=completed_at,
            meta={"x_request_id": job_id},
        )
        for job_id in ids
    ]


def observations(jobs: list[Job], silent: bool = False) -> list[Observation]:
    return [
        Observation(
            job=job,
            silent=silent,
            stall_reference_ms=None if job.terminal else int(CREATED.timestamp() * 1000),
        )
        for job in jobs
    ]


async def run(store: Store, label: str, batch: list[Observation]) -> float:
    """Observations per second of `batch` through `store`, printed with their outcomes."""
    results: Counter[str] = Counter()
    started = time.perf_counter()
    for at in range(0, len(batch), BATCH):
        outcomes = await store.observe(batch[at : at + BATCH])
        results.update(outcome.result for outcome in outcomes)
    seconds = time.perf_counter() - started
    outcome_text = ", ".join(f"{name}={count}" for name, count in sorted(results.items()))
    print(
        f"  {label:<38} {len(batch) / seconds:>9,.0f} obs/s  ({len(batch):,} in {seconds:.2f} s;"
        f" {outcome_text})"
    )
    return len(batch) / seconds


async def used_memory(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def throughput(redis: aioredis.Redis, ids: list[str]) -> dict[str, float]:
    """Observations per second of each step."""
    live = Store(redis, "bench-live")
    steps = [
        ("new jobs (pending, event emitted)", "pending", False),
        ("status change pending -> started", "started", True),
        ("status change started -> success", "success", True),
        ("same status again (unchanged)", "success", True),
    ]
    rates = {}
    for label, status, started in steps:
        rates[label] = await run(live, label, observations(make_jobs(status, ids, started)))
    events = await redis.xlen(live.events_key)
    events_bytes = await redis.memory_usage(live.events_key, samples=0) or 0
    print(f"  outbox: {events:,} events, {events_bytes / max(events, 1):,.0f} bytes per event")
    return rates


async def memory(redis: aioredis.Redis, ids: list[str]) -> dict[str, float]:
    """Observations per second of a silent baseline, and Redis bytes per recorded job."""
    history = Store(redis, "bench-history")
    before = await used_memory(redis)
    batch = observations(make_jobs("success", ids, True), silent=True)
    rate = await run(history, "baseline, finished jobs (silent)", batch)
    delta = await used_memory(redis) - before
    hash_bytes = await redis.memory_usage(history.jobs_key, samples=0) or 0
    print(f"memory per tracked job ({len(ids):,} finished jobs in the jobs hash):")
    print(f"  MEMORY USAGE jobs hash: {hash_bytes:,} bytes = {hash_bytes / len(ids):.1f} bytes/job")
    print(f"  INFO used_memory delta: {delta:,} bytes = {delta / len(ids):.1f} bytes/job")
    print("  (used_memory is server-wide: other clients of this Redis can move it)")
    return {"baseline_obs_per_s": rate, "jobs_hash_bytes_per_job": hash_bytes / len(ids)}


def draw(runs: dict[str, list[float]], bytes_per_job: float) -> Any:
    def panel(axis: Any) -> None:
        labels = list(runs)
        best = [max(runs[label]) for label in labels]
        axis.barh(labels, best, color=BRIDGE_COLOUR)
        for y, label in enumerate(labels):
            axis.scatter(runs[label], [y] * len(runs[label]), color="black", s=8, zorder=3)
            axis.annotate(f" {best[y]:,.0f}/s", (best[y], y), va="center", fontsize=8)
        axis.axvline(TARGET, color=ACCENT_COLOUR, linestyle="--", label="target (issue 13)")
        axis.invert_yaxis()
        axis.set_xlabel(
            f"observations per second (Store.observe, batches of {BATCH}); "
            "bars: best, dots: each run"
        )
        axis.set_xlim(0, max(*best, TARGET) * 1.2)
        axis.legend(fontsize=8, loc="lower right")
        axis.set_title(f"Redis memory per finished job: {bytes_per_job:.0f} bytes", fontsize=9)

    return panel


async def main() -> None:
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    machine = await harness.describe_machine(redis)
    runs: dict[str, list[float]] = {}
    try:
        print(f"observe throughput: {JOBS:,} jobs, batches of {BATCH}, {REPEATS} repeats")
        for repeat in range(REPEATS):
            print(f" #{repeat + 1}")
            await redis.flushdb()
            ids = [str(uuid.uuid4()) for _ in range(JOBS)]
            rates = await throughput(redis, ids)
            await redis.flushdb()
            stored = await memory(redis, ids)
            rates["baseline, finished jobs (silent)"] = stored["baseline_obs_per_s"]
            for label, rate in rates.items():
                runs.setdefault(label, []).append(rate)
    finally:
        await redis.flushdb()
        await redis.aclose()
    summary = {label: harness.spread(values) for label, values in runs.items()}
    for label, values in summary.items():
        print(f"{label:<38} {harness.show_spread(values)} obs/s")
    bytes_per_job = stored["jobs_hash_bytes_per_job"]
    harness.write_results(
        "observe_throughput",
        machine,
        {
            "settings": {"jobs": JOBS, "batch": BATCH, "repeats": REPEATS},
            "obs_per_s": summary,
            "memory": {"jobs_hash_bytes_per_job": bytes_per_job},
        },
    )
    harness.plot(
        "observe_throughput",
        machine,
        f"Observations per second through the observe script ({JOBS:,} jobs per step)",
        draw(runs, bytes_per_job),
    )


if __name__ == "__main__":
    asyncio.run(main())
