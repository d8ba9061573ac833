"""Each subscription on its own: a slow, black-holed or removed one holds back nobody, claims
take only what a consumer that is gone left, and a flushed Redis is recovered from.

Real Redis, real webhook receivers, events written by the real observe script.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import ON_BOTH, RedisTarget
from helpers import eventually
from lanes_harness import (
    OTHER_STORE,
    STORE,
    STORES,
    Endpoint,
    ServerFactory,
    dispatcher,
    dispatching,
    emit,
    emit_each,
    endpoint,
    hook,
)
from structlog.testing import capture_logs

from bridge import lanes
from bridge.deliveries import Deliveries
from bridge.dispatcher import Dispatcher
from bridge.keys import group_name
from bridge.outbox import backlog
from bridge.store import Store, event_from_outbox


def delivered_all(target: Endpoint, ids: list[str]) -> bool:
    return set(ids) <= set(target.arrivals)


async def group_names(redis: aioredis.Redis, store: str = STORE) -> set[str]:
    return {g["name"] for g in await redis.xinfo_groups(Store(redis, store).events_key)}


async def groups_of_each(redis: aioredis.Redis) -> list[set[str]]:
    """The consumer groups of each outbox of STORES."""
    return [await group_names(redis, store) for store in STORES]


async def claim_pass_after(found: Dispatcher, lane: str, moment: float) -> None:
    """Until a claim pass of `lane` that began after `moment` has completed: the fence for
    "nothing was claimed", instead of a sleep."""
    await eventually(
        lambda: found.lanes[lane].claimed_through > moment, 15, f"a claim pass of {lane}"
    )


@ON_BOTH
async def test_a_slow_subscription_neither_slows_nor_duplicates_a_fast_one(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    """Before: the fast one got events at the slow one's pace, and with claim_idle 3 s the
    dispatcher claimed its own in-flight entries: 13 deliveries for 8 events. Two stores,
    whose outboxes are on two masters of the cluster."""
    any_redis.assert_apart(STORES)
    slow = await endpoint(aiohttp_server, delay=1.0)
    fast = await endpoint(aiohttp_server)
    subs = [hook("slow", slow, concurrency=1), hook("fast", fast)]
    found = dispatcher(any_redis.client, subs, STORES, claim_idle=3.0)
    async with dispatching(found):
        emitted = time.monotonic()
        ids = await emit_each(any_redis.client, 4)
        await eventually(lambda: delivered_all(fast, ids), 5, "the fast deliveries")
        fast_done = time.monotonic() - emitted
        await eventually(lambda: delivered_all(slow, ids), 20, "the slow deliveries")
        await claim_pass_after(found, "slow", time.monotonic() + 3.0)  # nothing sent again
    assert fast_done < 1.0  # not 8 x 1 s
    assert fast.counts() == dict.fromkeys(ids, 1)
    assert slow.counts() == dict.fromkeys(ids, 1)
    assert found.stats["claimed"] == 0


@ON_BOTH
async def test_an_event_in_any_outbox_wakes_the_lanes_at_once(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    """The watch's blocking read (on the cluster, one per slot) wakes the lanes: they do not
    wait for their own look at the outboxes, every `block` seconds."""
    any_redis.assert_apart(STORES)
    target = await endpoint(aiohttp_server)
    found = dispatcher(any_redis.client, [hook("hook", target)], STORES, block=5.0)
    latencies = []
    async with dispatching(found):
        for store in STORES * 5:
            sent = time.monotonic()
            [eid] = await emit(any_redis.client, store=store)
            await eventually(lambda e=eid: e in target.arrivals, 10, f"an event of {store}")
            latencies.append(target.arrivals[eid][0] - sent)
    assert max(latencies) < 1.0, latencies  # not up to 5 s


async def test_a_black_holed_subscription_leaves_a_healthy_one_at_its_latency(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """Before: past ~80 queued events for a black hole, one global in-flight limit held
    every subscription back, and each outbox entry waited for all its subscriptions."""
    hole = await endpoint(aiohttp_server, hang=True)
    healthy = await endpoint(aiohttp_server)
    subs = [hook("hole", hole, timeout="30s"), hook("healthy", healthy)]
    found = dispatcher(redis_client, subs, claim_idle=3.0)
    latencies: list[float] = []
    async with dispatching(found):
        ids = await emit(redis_client, 250)  # the black hole holds its window, and more wait
        await eventually(lambda: delivered_all(healthy, ids), 10, "the healthy deliveries")
        for _ in range(20):  # then one at a time, each timed
            sent = time.monotonic()
            [eid] = await emit(redis_client)
            await eventually(lambda e=eid: e in healthy.arrivals, 5, "a healthy delivery")
            latencies.append(healthy.arrivals[eid][0] - sent)
        # A claim pass that began past claim_idle: the black hole's entries are not claimed.
        await claim_pass_after(found, "hole", time.monotonic() + 3.0)
        backlog = await found.backlog("hole")
        ids += [eid for eid in healthy.arrivals if eid not in ids]
    assert healthy.counts() == dict.fromkeys(ids, 1)
    assert statistics.median(latencies) < 0.1 and max(latencies) < 0.5, latencies
    assert found.stats["claimed"] == 0
    assert max(hole.counts().values()) == 1  # nothing it holds went out twice
    assert backlog["events"] == 270 and backlog["pending"] > 0


@ON_BOTH
async def test_entries_of_a_consumer_that_is_gone_are_claimed_and_delivered(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    redis = any_redis.client
    target = await endpoint(aiohttp_server)
    sub = hook("hook", target)
    keys = [Store(redis, store).events_key for store in STORES]
    for key in keys:
        await redis.xgroup_create(key, group_name("hook"), id="$", mkstream=True)
    ids = await emit_each(redis, 3)
    # A replica read them and died before it acknowledged them (one read per outbox: a
    # cluster refuses one over two slots).
    for key in keys:
        await redis.xreadgroup(group_name("hook"), "gone", {key: ">"})
    found = dispatcher(redis, [sub], STORES, claim_idle=0.5)
    async with dispatching(found):
        await eventually(lambda: delivered_all(target, ids), 10, "the claimed entries")
    assert target.counts() == dict.fromkeys(ids, 1)
    assert found.stats["claimed"] == 6


@ON_BOTH
async def test_apply_starts_restarts_and_removes_lanes_while_running(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    redis = any_redis.client
    first, second, third = [await endpoint(aiohttp_server) for _ in range(3)]
    a, b = hook("a", first, retry_schedule=["1h"]), hook("b", second)
    found = dispatcher(redis, [a], STORES)
    deliveries = Deliveries(redis)
    async with dispatching(found):
        before = await emit_each(redis)
        await eventually(lambda: delivered_all(first, before), 5, "a's first events")
        first.status = 500  # a retry of a's is scheduled (an hour away) when a goes
        [retried] = await emit(redis)
        await eventually(lambda: _retrying(deliveries, "a"), 5, "a's retry")

        await found.apply([a, b])  # b is new: its groups start at `$`, history is replay's
        assert await groups_of_each(redis) == [{"sub:a", "sub:b"}] * 2
        after = await emit(redis, store=OTHER_STORE)
        await eventually(lambda: delivered_all(second, after), 5, "b's first event")
        assert retried in first.arrivals and not set(before) & set(second.arrivals)

        moved = hook("b", third)  # b's config changes: a new sink, the same group
        await found.apply([moved, b.model_copy(update={"name": "paused", "enabled": False})])
        assert set(found.lanes) == {"b"} and found.lanes["b"].sub == moved
        assert await groups_of_each(redis) == [{"sub:b"}] * 2  # a's are deleted
        names = {s.name for s in found.supervisor.states()}
        assert "lane:b" in names and not any(n.startswith("lane:a") for n in names)
        last = await emit_each(redis)
        await eventually(lambda: delivered_all(third, last), 5, "b's events at its new url")
    assert not set(last) & (set(second.arrivals) | set(first.arrivals))
    assert first.counts()[retried] == 1  # a's retries stopped
    assert await deliveries.retry_count("a") == 2  # ... and stay readable (`after` failed too)
    assert len(await deliveries.attempts_for_subscription("a")) == 4


async def _retrying(deliveries: Deliveries, name: str) -> bool:
    return await deliveries.retry_count(name) == 1


@ON_BOTH
async def test_redis_losing_its_data_is_recovered_and_later_events_delivered(
    aiohttp_server: ServerFactory, any_redis: RedisTarget
) -> None:
    """Before: the dispatcher looped on NOGROUP forever and the log line lost the text."""
    redis = any_redis.client
    target = await endpoint(aiohttp_server)
    found = dispatcher(redis, [hook("hook", target)], STORES)
    with capture_logs() as logs:
        async with dispatching(found):
            before = await emit_each(redis, 2)
            await eventually(lambda: delivered_all(target, before), 5, "before the flush")
            await redis.flushdb()  # as a Redis restarted without persistence (every master)
            after = await emit_each(redis, 3)
            await eventually(lambda: delivered_all(target, after), 10, "after the flush")
            more = await emit_each(redis, 2)
            await eventually(lambda: delivered_all(target, more), 5, "later still")
    lost = [e for e in logs if e["event"] == "state_lost"]
    # One read found both outboxes' groups gone; on the cluster each slot's read on its own.
    assert len(lost) == (1 if any_redis.cluster is None else len(STORES))
    assert all(e["log_level"] == "error" for e in lost)
    assert all(e["error"].startswith("NOGROUP No such key") for e in lost)
    assert target.counts() == dict.fromkeys(before + after + more, 1)
    assert await groups_of_each(redis) == [{"sub:hook"}] * 2
    assert not [e for e in logs if e["event"] == "loop_crashed"]


async def test_the_delivery_state_of_before_lanes_is_taken_over(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """An upgrade: the shared group `dispatch`, `jb:retry` and `jb:dlq` of the last version."""
    target = await endpoint(aiohttp_server)
    key = Store(redis_client, STORE).events_key
    await redis_client.xgroup_create(key, "dispatch", id="$", mkstream=True)
    done, in_hand, unread = await emit(redis_client, 3)
    [(_, [(done_entry, _)])] = await redis_client.xreadgroup("dispatch", "old", {key: ">"}, 1)
    await redis_client.xack(key, "dispatch", done_entry)
    await redis_client.xreadgroup("dispatch", "old", {key: ">"}, count=1)  # never acknowledged
    [retried] = await emit(redis_client)  # (read and acknowledged: it went to the schedule)
    await redis_client.xreadgroup("dispatch", "old", {key: ">"}, count=1)
    event = event_from_outbox((await redis_client.xrange(key))[-1][1])
    await redis_client.xack(key, "dispatch", (await redis_client.xrange(key))[-1][0])
    await redis_client.zadd("jb:retry", {f"hook\n{retried}": 0})
    await redis_client.hset(f"jb:delivery:hook:{retried}", mapping={"event": json.dumps(event)})
    letter = {"subscription": "hook", "event_id": "e-0", "reason": "old", "attempts": 3}
    await redis_client.xadd("jb:dlq", {**letter, "failed_at": "x", "event": "{}"})
    found = dispatcher(redis_client, [hook("hook", target)])
    async with dispatching(found):
        await eventually(lambda: delivered_all(target, [in_hand, unread, retried]), 10, "all")
    assert done not in target.arrivals
    assert await group_names(redis_client) == {"sub:hook"}
    assert not await redis_client.exists("jb:retry", "jb:dlq", f"jb:delivery:hook:{retried}")
    [letter] = await Deliveries(redis_client).dead_letters()
    assert (letter.subscription, letter.event_id, letter.reason) == ("hook", "e-0", "old")


@ON_BOTH
async def test_entries_read_by_a_read_whose_reply_was_lost_are_delivered_at_once(
    aiohttp_server: ServerFactory, any_redis: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read can be done in Redis and its reply lost (on a cluster: a node lost in the middle
    of the pipeline of per-slot reads): the entries are the lane's consumer's, not in hand.
    They are taken again from its pending list at the next step, not after claim_idle."""
    target = await endpoint(aiohttp_server)
    found = dispatcher(any_redis.client, [hook("hook", target)], STORES, claim_idle=600.0)
    real_read = lanes.xreadgroup
    lost: list[int] = []

    async def read_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        replies = await real_read(*args, **kwargs)
        if not lost and any(entries for _keys, reply in replies for _key, entries in reply or ()):
            lost.append(1)
            raise ConnectionError("Connection lost (the test dropped the reply)")
        return replies

    monkeypatch.setattr(lanes, "xreadgroup", read_then_lose_the_reply)
    async with dispatching(found):
        ids = await emit_each(any_redis.client, 3)
        await eventually(lambda: delivered_all(target, ids), 10, "the deliveries")

        async def acknowledged() -> bool:
            return (await backlog(any_redis.client, found.outbox_keys, "hook"))["events"] == 0

        await eventually(acknowledged, 5, "the acknowledgements")
    assert lost  # a reply was lost, the entries were in Redis's hands only
    assert target.counts() == dict.fromkeys(ids, 1)
    assert found.stats["claimed"] == 0
