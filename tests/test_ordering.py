"""`ordering: job`: a job's events reach a subscription in sequence order, a retried event holds
back the later ones of its job and no other job, dead-lettering releases them, and what waits
lives in Redis (restarts, replicas, a Redis Cluster).

Real Redis, real webhook receivers, events written by the real observe script.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from cluster import LocalCluster
from conftest import ON_BOTH, RedisTarget
from helpers import eventually, make_config, new_secret, webhook
from lanes_harness import STORE, ServerFactory, dispatcher, dispatching, new_job
from ordering_kit import eid, move, ordered, receiver

from bridge.config import ConfigError
from bridge.deliveries import Deliveries, PendingRetry
from bridge.events import encode
from bridge.keys import group_name, parked_key, retry_key
from bridge.ordering import JobOrder
from bridge.store import Observation, Store, event_from_outbox


@ON_BOTH
async def test_a_retried_event_holds_back_its_job_only(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    redis_client = any_redis.client
    a, b = new_job("pending"), new_job("pending")
    target = await receiver(aiohttp_server, failing={(a.id, "started"): 3})
    found = dispatcher(redis_client, [ordered("ordered", target)])
    async with dispatching(found):
        await move(redis_client, a, "started", "success")  # success waits in the outbox
        await move(redis_client, b, "started", "success")
        await eventually(lambda: target.delivered(a, "success"), 10, "a's success")
    assert target.of(a) == [("started", 500)] * 3 + [("started", 204), ("success", 204)]
    assert target.of(b) == [("started", 204), ("success", 204)]
    b_done, a_started = target.delivered(b, "success"), target.delivered(a, "started")
    assert b_done is not None and a_started is not None and b_done < a_started
    assert found.stats["parked"] >= 1  # a's success (b's too, if read while b's start was out)
    assert await redis_client.hlen(parked_key("ordered")) == 0  # nothing left waiting


async def test_dead_lettering_an_event_releases_the_next_of_its_job(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    a = new_job("pending")
    target = await receiver(aiohttp_server, failing={(a.id, "started"): -1})
    found = dispatcher(redis_client, [ordered("ordered", target, retry_schedule=["100ms"])])
    async with dispatching(found):
        await move(redis_client, a, "started", "success")
        await eventually(lambda: target.delivered(a, "success"), 10, "a's success")
    assert target.of(a) == [("started", 500), ("started", 500), ("success", 204)]
    [letter] = await Deliveries(redis_client).dead_letters("ordered")
    assert letter.event_id == eid(a, "started") and letter.attempts == 2


async def test_events_the_subscription_never_gets_are_not_waited_for(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """Order is by what the subscription receives: a filtered-out event, or one from before
    the subscription existed, is no gap to wait for."""
    a, b = new_job("pending"), new_job("pending")
    target, late_target = await receiver(aiohttp_server), await receiver(aiohttp_server)
    finished = ordered("finished", target, filter={"statuses": ["success"]})
    late = ordered("late", late_target)
    found = dispatcher(redis_client, [finished])
    async with dispatching(found):
        await move(redis_client, a, "started", "success")
        b = await move(redis_client, b, "started")
        await eventually(lambda: target.delivered(a, "success"), 5, "a's success")
        await found.apply([finished, late])  # its groups start here: b's start is history
        started = time.monotonic()
        await move(redis_client, b, "success")
        await eventually(lambda: late_target.delivered(b, "success"), 5, "b's success")
    assert target.of(a) == [("success", 204)]
    assert late_target.of(b) == [("success", 204)]
    assert (late_target.delivered(b, "success") or 0) - started < 1.0


async def test_parked_events_outlive_a_crash(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """A replica dies while a job's first event waits for its retry and its second is parked:
    both were acknowledged in the outbox, and the next replica delivers them, in order."""
    a = new_job("pending")
    target = await receiver(aiohttp_server, failing={(a.id, "started"): -1})
    sub = ordered("ordered", target, retry_schedule=["1s"])
    first = dispatcher(redis_client, [sub])
    stop = asyncio.Event()
    await first.prepare(stop)
    task = asyncio.create_task(first.run(stop))
    await move(redis_client, a, "started", "success")
    await eventually(lambda: first.stats["parked"] == 1, 5, "the success parked")
    await eventually(lambda: first.counts["ordered"]["retries_scheduled"] == 1, 5, "a retry")
    outbox = Store(redis_client, STORE).events_key

    async def acknowledged() -> bool:  # (flushed every 50 ms)
        return (await redis_client.xpending(outbox, group_name("ordered")))["pending"] == 0

    await eventually(acknowledged, 5, "the acknowledgements")
    task.cancel()  # a crash: no drain, no goodbye
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert (await redis_client.xpending(outbox, group_name("ordered")))["pending"] == 0
    assert await redis_client.zcard(retry_key("ordered")) == 1  # started, due in about 1 s
    assert await redis_client.hlen(parked_key("ordered")) == 1  # success

    target.failing.clear()
    async with dispatching(dispatcher(redis_client, [sub])):
        await eventually(lambda: target.delivered(a, "success"), 10, "a's success")
    assert target.of(a) == [("started", 500), ("started", 204), ("success", 204)]


@ON_BOTH
async def test_replicas_draining_a_backlog_keep_each_job_in_order(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    """Two processes read one subscription's group in small batches; a job's events sit next
    to each other in the outbox, so consecutive ones often go to different replicas."""
    redis_client = any_redis.client
    target = await receiver(aiohttp_server, delay=0.01, jitter=True)
    sub = ordered("ordered", target)
    replicas = [dispatcher(redis_client, [sub], batch=2) for _ in range(2)]
    await replicas[0].prepare(asyncio.Event())
    jobs = [new_job("pending") for _ in range(30)]
    for job in jobs:
        await Store(redis_client, STORE).observe([Observation(job)])
        await move(redis_client, job, "started", "success")
    async with dispatching(replicas[0]), dispatching(replicas[1]):
        await eventually(
            lambda: all(target.delivered(job, "success") for job in jobs), 20, "every success"
        )
    for job in jobs:
        assert [s for s, code in target.of(job) if code == 204] == [
            "pending",
            "started",
            "success",
        ]
    assert all(r.counts["ordered"]["delivered"] for r in replicas)  # both took part


async def test_a_batch_waits_while_an_older_one_of_another_replica_is_not_admitted(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(redis_client, STORE)
    group = group_name("ordered")
    await redis_client.xgroup_create(store.events_key, group, id="$", mkstream=True)
    job = new_job("pending")
    await store.observe([Observation(job)])
    await move(redis_client, job, "started")
    [[_, [(first, fields1)]]] = await redis_client.xreadgroup(
        group, "a", {store.events_key: ">"}, count=1
    )
    [[_, [(second, fields2)]]] = await redis_client.xreadgroup(
        group, "b", {store.events_key: ">"}, count=1
    )
    looks: list[str] = []  # the fence: wait_turn looked at the group's pending list again
    pending_range = redis_client.xpending_range

    async def look(*args: Any, **kwargs: Any) -> Any:
        looks.append(args[0])
        return await pending_range(*args, **kwargs)

    monkeypatch.setattr(redis_client, "xpending_range", look)
    order = JobOrder(redis_client, "ordered", group)
    waiting = asyncio.create_task(order.wait_turn(store.events_key, second, asyncio.Event()))
    await eventually(lambda: len(looks) >= 3, 5, "three looks at the pending list")
    assert not waiting.done()  # consumer a holds the older entry, not yet admitted
    pending, started = event_from_outbox(fields1), event_from_outbox(fields2)
    assert await order.admit(store.events_key, [(pending, encode(pending))], first) == [True]
    assert await asyncio.wait_for(waiting, 2) is True
    assert await order.admit(store.events_key, [(started, encode(started))], second) == [False]
    assert await redis_client.zcard(retry_key("ordered")) == 0
    assert await order.release(pending) is True  # started is next: due now
    assert await redis_client.zrange(retry_key("ordered"), 0, -1) == [started["id"]]
    assert await order.release(pending) is False  # (a duplicate finish changes nothing)


async def test_ordering_scripts_touch_one_cluster_slot(redis_cluster: LocalCluster) -> None:
    client = aiocluster.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        job = dataclasses.asdict(new_job("started"))
        events = [
            {
                "id": f"e-{n}",
                "subject": job["id"],
                "sequence": str(n),
                "data": {"store": STORE, "source": "pcm"},
            }
            for n in (1, 2)
        ]
        order = JobOrder(client, "ordered", group_name("ordered"))
        bodies = [(e, json.dumps(e).encode()) for e in events]
        assert await order.admit("jb:{shop}:events", bodies, "1-2") == [True, False]
        assert await order.release(events[0]) is True
        deliveries = Deliveries(client)
        [due] = await deliveries.claim_due("ordered")
        assert due.event == events[1] and due.attempts == 0
        assert await order.take_turns([due]) == [due]  # the head
        replayed = PendingRetry("ordered", "e-1", 0, events[0])
        assert await order.take_turns([replayed]) == []  # parks behind it
        assert await deliveries.dead_letter("ordered", events[1], 1, "gave up") is True  # e-1 next
        assert await deliveries.dead_letter_count("ordered") == 1
    finally:
        await client.aclose()


def test_ordering_is_none_by_default_and_job_on_request() -> None:
    def config(**options: Any) -> Any:
        sub = webhook("h", "https://example.com/h", new_secret(), **options)
        found = make_config("redis://127.0.0.1:6379/0", STORE, "https://ep.example", [sub])
        return found.subscriptions[0]

    assert config().ordering == "none"
    assert config(ordering="job").ordering == "job"
    with pytest.raises(ConfigError, match=r"subscriptions\[0\]\.ordering"):
        config(ordering="store")
