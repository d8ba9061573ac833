"""Job analytics: finished jobs counted once, per minute, with durations, in bounded Redis keys."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from apikit import STORE, bridge_with_api
from helpers import eventually

from bridge.analytics import BOUNDS, RETENTION, JobAnalytics, newly_finished, quantile, report
from bridge.jobs import Job
from bridge.store import Observation, Store

T0 = datetime(2024, 1, 5, 13, 0, tzinfo=UTC)


def job(job_id: str, status: str, wait: float | None = 4.0, run: float | None = 30.0, **kw) -> Job:
    started = T0 + timedelta(seconds=wait) if wait is not None else None
    completed = started + timedelta(seconds=run) if started and run is not None else None
    return Job(
        id=job_id,
        source=kw.get("source", "pcm"),
        type=kw.get("type", "product-import"),
        status=status,
        created_at=T0,
        updated_at=T0,
        started_at=started,
        completed_at=completed,
    )


def test_only_a_move_from_open_to_finished_counts():
    done, other = job("a", "success"), job("b", "failed")
    found = newly_finished(
        [
            (done, "emitted", "started"),
            (other, "emitted", "success"),  # finished already: not again
            (job("c", "started"), "emitted", "pending"),  # not finished
            (job("d", "failed"), "recorded", None),  # history recorded silently
            (job("e", "failed"), "unchanged", None),
        ]
    )
    assert found == [done]


def test_quantiles_interpolate_inside_a_bucket():
    buckets = [0] * (len(BOUNDS) + 1)
    assert quantile(0.5, buckets) is None
    buckets[BOUNDS.index(60.0)] = 10  # ten durations between 30 s and 60 s
    assert quantile(0.5, buckets) == 45.0
    assert quantile(0.9, buckets) == 57.0
    buckets[-1] = 90  # most beyond the last bound: all we know is "more than it"
    assert quantile(0.9, buckets) == BOUNDS[-1]


async def test_buckets_per_minute_with_counts_and_durations(redis_client):
    analytics = JobAnalytics(redis_client, "us-main")
    now = time.time()
    await analytics.record([job("a", "success"), job("b", "failed", run=200.0)], at=now - 120)
    await analytics.record([job("c", "success", type="price-import", wait=None)], at=now)
    minute = int((now - 120) // 60)
    key = analytics.key(minute)
    assert key.startswith("jb:{us-main}:analytics:")
    assert 0 < await redis_client.ttl(key) <= RETENTION

    found = await report([analytics], minutes=10, now=now)
    assert found["step_seconds"] == 60 and found["minutes"] == 10
    types = {t["job_type"]: t for t in found["types"]}
    imports = types["product-import"]
    assert imports["totals"] == {"success": 1, "failed": 1, "cancelled": 0}
    assert sum(imports["success"]) == 1 and imports["success"][-3] == 1
    assert imports["run"]["count"] == 2 and imports["run"]["sum"] == 230.0
    assert imports["wait"]["avg"] == 4.0
    assert imports["run_avg"][-3] == 115.0
    prices = types["price-import"]
    assert prices["wait"]["count"] == 0 and prices["run"]["count"] == 0  # no started_at
    assert prices["totals"]["success"] == 1

    # A long window merges minutes into steps: never more than 120 points.
    week = await report([analytics], minutes=RETENTION // 60, now=now)
    assert len(week["types"][0]["success"]) <= 120
    assert week["types"][0]["totals"]["success"] == 1


async def test_the_store_records_a_job_once_when_it_finishes(redis_client):
    store = Store(redis_client, "us-main")
    seen: list[tuple[str, float | None, float | None]] = []
    store.analytics.observers.append(lambda s, j, wait, run: seen.append((j.id, wait, run)))
    await store.observe([Observation(job("a", "started", run=None))])
    assert seen == []
    finished = job("a", "success")
    await store.observe([Observation(finished)])
    await store.observe([Observation(finished)])  # seen again: unchanged
    assert seen == [("a", 4.0, 30.0)]
    found = await report([store.analytics], minutes=5)
    assert found["types"][0]["totals"]["success"] == 1


async def test_console_analytics_endpoint(aiohttp_server, redis_client, redis_url):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        job_id = running.sim.create_job(job_type="product-export", status="success")
        assert job_id

        async def counted() -> bool:
            _, body = await running.get("/analytics?minutes=30")
            return any(t["job_type"] == "product-export" for t in body["types"])

        await eventually(counted, what="the finished job in /analytics")
        status, body = await running.get(f"/analytics?minutes=30&store={STORE}")
        assert status == 200 and body["types"][0]["totals"]["success"] == 1
        assert (await running.get("/analytics?store=nope"))[0] == 404
        assert (await running.get("/analytics?minutes=0"))[0] == 400
