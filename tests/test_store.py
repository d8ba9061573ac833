"""The observe and stall scripts against real Redis: one event per transition, whatever races."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from conftest import ON_BOTH, RedisTarget

from bridge.events import event_id
from bridge.jobs import Job
from bridge.redisclient import open_redis
from bridge.store import Observation, Store, event_from_outbox

T0 = datetime(2024, 1, 5, 13, 46, 41, 695000, tzinfo=UTC)


def job(job_id: str = "j1", status: str = "pending", updated: datetime = T0, **kw) -> Job:
    return Job(
        id=job_id,
        source="pcm",
        type="product-import",
        status=status,
        created_at=T0,
        updated_at=updated,
        **kw,
    )


async def outbox(store: Store) -> list[dict]:
    entries = await store.redis.xrange(store.events_key)
    return [event_from_outbox(fields) for _id, fields in entries]


@ON_BOTH
async def test_first_sight_emits_with_null_previous_and_sequence_1(any_redis: RedisTarget):
    store = Store(any_redis.client, "us-main")
    [outcome] = await store.observe([Observation(job())])
    assert (outcome.result, outcome.sequence, outcome.previous_status) == ("emitted", 1, None)
    [event] = await outbox(store)
    assert event["type"] == "com.elasticpath.pcm.job.pending"
    assert event["sequence"] == "1"
    assert event["data"]["previous_status"] is None
    assert event["id"] == event_id("us-main", "pcm", "j1", "pending")
    assert event["source"] == "/stores/us-main/pcm/jobs"
    assert event["subject"] == "j1"
    assert event["data"]["job"]["created_at"] == "2024-01-05T13:46:41.695Z"


@ON_BOTH
async def test_baseline_records_silently_then_changes_emit(any_redis: RedisTarget):
    store = Store(any_redis.client, "s")
    [outcome] = await store.observe([Observation(job(), silent=True, stall_reference_ms=1)])
    assert outcome.result == "recorded"
    assert await outbox(store) == []
    assert await store.open_jobs("pcm") == {"j1": 1}
    # updated_at does not move on completion: the status alone must be enough.
    done = job(status="success", completed_at=T0 + timedelta(seconds=3))
    [outcome] = await store.observe([Observation(done)])
    assert (outcome.result, outcome.sequence, outcome.previous_status) == (
        "emitted",
        1,
        "pending",
    )
    [event] = await outbox(store)
    assert event["data"]["status"] == "success"
    assert event["data"]["previous_status"] == "pending"
    assert event["data"]["job"]["completed_at"] == "2024-01-05T13:46:44.695Z"
    assert await store.open_jobs("pcm") == {}


@ON_BOTH
async def test_unchanged_and_stale_observations_emit_nothing(any_redis: RedisTarget):
    store = Store(any_redis.client, "s")
    later = T0 + timedelta(seconds=5)
    await store.observe([Observation(job(status="started", updated=later))])
    outcomes = await store.observe(
        [
            Observation(job(status="started", updated=later)),  # same
            Observation(job(status="pending", updated=T0)),  # older updated_at
            Observation(job(status="pending", updated=later)),  # backwards, same version
        ]
    )
    assert [o.result for o in outcomes] == ["unchanged", "stale", "stale"]
    assert len(await outbox(store)) == 1


@ON_BOTH
async def test_late_started_read_after_success_is_refused(any_redis: RedisTarget):
    """Two pollers: one read `started`, the other `success`, same updated_at, either order."""
    store = Store(any_redis.client, "s")
    started = job(status="started", updated=T0 + timedelta(seconds=1))
    success = dataclasses.replace(started, status="success", completed_at=T0 + timedelta(seconds=2))
    await store.observe([Observation(success)])
    [outcome] = await store.observe([Observation(started)])
    assert outcome.result == "stale"
    assert [e["data"]["status"] for e in await outbox(store)] == ["success"]


@ON_BOTH
async def test_racing_observers_give_each_transition_once(any_redis: RedisTarget):
    """Eight clients race over 200 jobs through their lifecycle; the outbox has no duplicate."""
    cluster = any_redis.cluster is not None
    clients = [open_redis(any_redis.url, cluster=cluster) for _ in range(8)]
    stores = [Store(c, "race") for c in clients]
    lifecycle = ["pending", "started", "success"]
    try:
        for step, status in enumerate(lifecycle):
            updated = T0 + timedelta(seconds=step if status != "success" else 1)
            batch = [Observation(job(f"j{i}", status, updated)) for i in range(200)]
            await asyncio.gather(*(s.observe(batch) for s in stores))
        events = await outbox(stores[0])
        ids = [e["id"] for e in events]
        assert len(ids) == len(set(ids)) == 600
        by_job: dict[str, list[str]] = {}
        for e in events:
            by_job.setdefault(e["subject"], []).append(e["sequence"])
        assert all(seqs == ["1", "2", "3"] for seqs in by_job.values())
    finally:
        await clients[0].flushdb()
        for c in clients:
            await c.aclose()


@ON_BOTH
async def test_stalled_is_emitted_once_per_open_phase(any_redis: RedisTarget):
    store = Store(any_redis.client, "s")
    pending = job()
    await store.observe([Observation(pending, stall_reference_ms=0)])
    assert await store.mark_stalled(pending) is True
    assert await store.mark_stalled(pending) is False
    started = job(status="started", updated=T0 + timedelta(seconds=1))
    await store.observe([Observation(started, stall_reference_ms=0)])
    assert await store.mark_stalled(started) is True
    events = await outbox(store)
    assert [(e["data"]["status"], e["data"]["previous_status"], e["sequence"]) for e in events] == [
        ("pending", None, "1"),
        ("stalled", "pending", "2"),
        ("started", "pending", "3"),
        ("stalled", "started", "4"),
    ]
    assert events[1]["type"] == "com.elasticpath.pcm.job.stalled"
    assert len({e["id"] for e in events}) == 4


@ON_BOTH
async def test_errors_and_file_locations_travel_with_the_event(any_redis: RedisTarget):
    store = Store(any_redis.client, "s")
    failed = job(status="failed")
    await store.observe([Observation(failed, errors=[{"message": "sku: Must be unique."}])])
    [event] = await outbox(store)
    assert event["data"]["errors"] == [{"message": "sku: Must be unique."}]
    assert "file_locations" not in event["data"]


@ON_BOTH
async def test_keys_share_one_hash_tag(any_redis: RedisTarget):
    store = Store(any_redis.client, "us-main")
    keys = [store.jobs_key, store.open_key, store.meta_key, store.events_key]
    assert {k.split("}")[0] for k in keys} == {"jb:{us-main"}


async def _outbox_status_after_reading_two_of_five(client) -> dict:
    store = Store(client, "lag")
    await store.observe([Observation(job(f"j{i}")) for i in range(5)])
    await client.xgroup_create(store.events_key, "dispatch", id="0")
    await client.xreadgroup("dispatch", "c1", {store.events_key: ">"}, count=2)
    return await store.outbox_status("dispatch")


@ON_BOTH
async def test_outbox_status_reports_lag_and_pending(any_redis: RedisTarget):
    status = await _outbox_status_after_reading_two_of_five(any_redis.client)
    assert status == {"length": 5, "pending": 2, "lag": 3}


@ON_BOTH
async def test_outbox_lag_is_counted_when_redis_cannot_say(any_redis: RedisTarget):
    """XINFO GROUPS gives no lag on Redis before 7, nor after a deletion past the group's cursor
    on any version: the entries after the cursor are counted instead."""
    store = Store(any_redis.client, "lag")
    await store.observe([Observation(job(f"j{i}")) for i in range(5)])
    await any_redis.client.xgroup_create(store.events_key, "dispatch", id="0")
    await any_redis.client.xreadgroup("dispatch", "c1", {store.events_key: ">"}, count=2)
    *_, last = await any_redis.client.xrange(store.events_key)
    await any_redis.client.xdel(store.events_key, last[0])
    [group] = await any_redis.client.xinfo_groups(store.events_key)
    assert group["lag"] is None  # the server cannot say
    assert await store.outbox_status("dispatch") == {"length": 4, "pending": 2, "lag": 2}
