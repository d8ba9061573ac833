"""`ordering: job` when replicas die holding outbox entries: what another replica claims, or a
lane reads again, is admitted in outbox order too, and a head that was never delivered goes
out as the head.

Real Redis, a real webhook receiver, events written by the real observe script; the replicas
that die are consumers driven by hand, the one that survives is a real Dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from helpers import eventually
from lanes_harness import STORE, ServerFactory, dispatcher, dispatching, new_job
from ordering_kit import move, ordered, receiver

from bridge.events import encode
from bridge.keys import group_name, heads_key, parked_key
from bridge.ordering import JobOrder
from bridge.store import Observation, Store, event_from_outbox

CLAIM_IDLE = 0.5


async def read_one(redis: aioredis.Redis, consumer: str) -> tuple[str, dict[str, Any]]:
    """The next outbox entry, read for the subscription by `consumer`: its id and event."""
    key = Store(redis, STORE).events_key
    [[_, [(entry_id, fields)]]] = await redis.xreadgroup(
        group_name("ordered"), consumer, {key: ">"}, count=1
    )
    return entry_id, event_from_outbox(fields)


async def keep_fresh(redis: aioredis.Redis, consumer: str, entry_id: str) -> None:
    """What a live replica's heartbeat does: the entry's idle time restarts, so none claims it."""
    key = Store(redis, STORE).events_key
    while True:
        await redis.xclaim(key, group_name("ordered"), consumer, 0, [entry_id], justid=True)
        await asyncio.sleep(CLAIM_IDLE / 5)


async def nothing_pending(redis: aioredis.Redis) -> bool:
    key = Store(redis, STORE).events_key
    return (await redis.xpending(key, group_name("ordered")))["pending"] == 0


async def admit_then_die(
    redis: aioredis.Redis, consumer: str, entry: tuple[str, dict[str, Any]]
) -> list[bool]:
    """A live replica's turn with one entry: it waits for the older ones, admits its own, and
    dies before delivering it (the entry stays pending, unacknowledged)."""
    entry_id, event = entry
    key = Store(redis, STORE).events_key
    beat = asyncio.create_task(keep_fresh(redis, consumer, entry_id))
    try:
        order = JobOrder(redis, "ordered", group_name("ordered"))
        assert await order.wait_turn(key, entry_id, asyncio.Event())
        return await order.admit(key, [(event, encode(event))], entry_id)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def test_a_claimed_entry_waits_for_an_older_one_a_live_replica_holds(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """Replicas b, c and a read one entry each: b another job's, c a job's `pending`, a its
    `started`. b and a die before admitting theirs; c, alive, waits for b's. The survivor
    claims b's and a's entries together: it must not admit a's `started` before c admits its
    `pending`. c then dies too, having admitted `pending` as its job's head without sending
    it: claimed, it goes out as the head (not parked behind itself), and `started` after it."""
    target = await receiver(aiohttp_server)
    sub = ordered("ordered", target)
    store = Store(redis_client, STORE)
    await redis_client.xgroup_create(store.events_key, group_name("ordered"), "$", mkstream=True)
    other, job = new_job("pending"), new_job("pending")
    await store.observe([Observation(other)])
    await store.observe([Observation(job)])
    await move(redis_client, job, "started")
    await read_one(redis_client, "b")  # other's pending: b dies with it
    held_by_c = await read_one(redis_client, "c")  # job's pending
    await read_one(redis_client, "a")  # job's started: a dies with it
    replica_c = asyncio.create_task(admit_then_die(redis_client, "c", held_by_c))
    survivor = dispatcher(redis_client, [sub], claim_idle=CLAIM_IDLE)
    async with dispatching(survivor):
        await eventually(lambda: target.delivered(job, "started"), 10, "the job's started")
        await eventually(lambda: target.delivered(other, "pending"), 5, "the other's pending")
        assert await asyncio.wait_for(replica_c, 1) == [True]  # pending became the head
        await eventually(lambda: nothing_pending(redis_client), 5, "every entry acknowledged")
    assert target.of(job) == [("pending", 204), ("started", 204)]
    assert target.of(other) == [("pending", 204)]
    assert (
        survivor.stats["claimed"] >= 4
    )  # b's, a's (not admitted: its turn had not come), c's, a's
    assert await redis_client.hlen(heads_key("ordered")) == 0
    assert await redis_client.hlen(parked_key("ordered")) == 0


async def test_entries_read_again_are_admitted_only_up_to_an_older_one_held_elsewhere(
    redis_client: aioredis.Redis,
) -> None:
    """A lane restarted in its process reads its own pending entries again (not as new): of
    its entries 1 and 3, only 1 may be admitted while 2 waits, not admitted, with c."""
    store = Store(redis_client, STORE)
    await redis_client.xgroup_create(store.events_key, group_name("ordered"), "$", mkstream=True)
    job = new_job("pending")
    await store.observe([Observation(job)])
    await move(redis_client, job, "started", "success")
    first, pending = await read_one(redis_client, "me")
    second, started = await read_one(redis_client, "c")
    third, _ = await read_one(redis_client, "me")
    key, order = store.events_key, JobOrder(redis_client, "ordered", group_name("ordered"))
    assert await order.in_turn(key, [first, third]) == 1
    assert await order.admit(key, [(pending, encode(pending))], first) == [True]
    assert await order.in_turn(key, [third]) == 0  # c's entry, not admitted yet, goes first
    assert await order.wait_turn(key, second, asyncio.Event())
    assert await order.admit(key, [(started, encode(started))], second) == [False]
    assert await order.in_turn(key, [third]) == 1
