"""Bounded state: the outbox trimmed only of what nobody owes, a hard cap that dead-letters
what it drops, dead consumers removed, dead letters expired. Real Redis throughout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import ON_BOTH, RedisTarget
from lanes_harness import STORE, Endpoint, emit, hook
from structlog.testing import capture_logs

from bridge.deliveries import Bounds, Deliveries
from bridge.keys import group_name, store_key
from bridge.outbox import Trimmer
from bridge.sinks.webhook import WebhookSubscription


def events_key() -> str:
    return store_key(STORE, "events")


def trimmer(redis: aioredis.Redis, subs: dict[str, Any] | None = None, **options: Any) -> Trimmer:
    settings: dict[str, Any] = {
        "retention": 2.0,
        "max_entries": 1_000_000,
        "consumer_retention": 3600.0,
        "consumer": "me",
        **options,
    }
    return Trimmer(redis, [events_key()], Deliveries(redis), lambda: subs or {}, **settings)


async def read(redis: aioredis.Redis, sub: str, count: int, ack: bool = True) -> list[str]:
    """Consumer `c` of `sub`'s group reads `count` entries (and acknowledges them)."""
    reply = await redis.xreadgroup(group_name(sub), "c", {events_key(): ">"}, count=count)
    ids = [entry_id for _key, entries in reply for entry_id, _ in entries]
    if ack and ids:
        await redis.xack(events_key(), group_name(sub), *ids)
    return ids


async def groups(redis: aioredis.Redis, *subs: str) -> None:
    for sub in subs:
        await redis.xgroup_create(events_key(), group_name(sub), id="$", mkstream=True)


@ON_BOTH
async def test_trimming_never_removes_what_a_subscription_owes(any_redis: RedisTarget) -> None:
    """Before: every append trimmed by age alone; with a 2 s retention, 2 of 301 events
    reached a subscription that was behind, and nothing was logged."""
    redis_client = any_redis.client
    await groups(redis_client, "running", "stopped")
    await emit(redis_client, 30)
    entries = [entry_id for entry_id, _ in await redis_client.xrange(events_key())]
    assert await read(redis_client, "running", 30) == entries
    assert await read(redis_client, "stopped", 10) == entries[:10]  # then it stopped
    assert await read(redis_client, "stopped", 2, ack=False) == entries[10:12]  # in hand
    trim = trimmer(redis_client)
    await trim.trim_once()
    assert await redis_client.xlen(events_key()) == 30  # younger than the retention: kept
    await asyncio.sleep(2.1)
    await emit(redis_client, 1)  # a newer entry, within the retention
    await trim.trim_once()
    kept = [entry_id for entry_id, _ in await redis_client.xrange(events_key())]
    # Delivered to both and past the retention: gone. Pending or unread for `stopped`: kept.
    assert kept[:-1] == entries[10:]
    await read(redis_client, "stopped", 30)  # it came back and caught up
    await redis_client.xack(events_key(), group_name("stopped"), *entries[10:12])
    await trim.trim_once()
    assert len(kept := [e for e, _ in await redis_client.xrange(events_key())]) == 1
    assert await read(redis_client, "running", 1) == kept


@ON_BOTH
async def test_past_the_hard_cap_what_is_dropped_is_dead_lettered_for_who_owed_it(
    any_redis: RedisTarget,
) -> None:
    redis_client = any_redis.client
    await groups(redis_client, "done", "behind", "failures-only")
    ids = await emit(redis_client, 6, status="success") + await emit(redis_client, 6)
    await read(redis_client, "done", 12)
    await read(redis_client, "behind", 2)
    subs = {"failures-only": _failures_only()}
    trim = trimmer(redis_client, subs, retention=3600.0, max_entries=4)
    with capture_logs() as logs:
        await trim.trim_once()
    assert await redis_client.xlen(events_key()) == 4
    deliveries = Deliveries(redis_client)
    behind = [d.event_id for d in await deliveries.dead_letters("behind")]
    assert behind == ids[2:8]  # what it had not read of the 8 dropped
    failures = [d.event_id for d in await deliveries.dead_letters("failures-only")]
    assert failures == ids[6:8]  # only what its filter takes
    assert await deliveries.dead_letters("done") == []
    [letter] = (await deliveries.dead_letters("behind"))[:1]
    assert letter.reason == "dropped from the outbox: over outbox_max_entries (4)"
    [overflow] = [e for e in logs if e["event"] == "outbox_overflow"]
    assert overflow["log_level"] == "error" and overflow["dropped"] == 8
    assert overflow["dead_lettered"] == 8


def _failures_only() -> WebhookSubscription:
    target = Endpoint(url="http://127.0.0.1:9/")
    return hook("failures-only", target, filter={"statuses": ["failed"]})


async def test_consumers_long_gone_leave_their_groups(redis_client: aioredis.Redis) -> None:
    """Before: every restart left one more consumer name in the group, forever."""
    await groups(redis_client, "hook")
    await emit(redis_client, 2)
    group = group_name("hook")
    await redis_client.xreadgroup(group, "gone-clean", {events_key(): ">"}, count=1)
    await redis_client.xack(events_key(), group, *(await _pending_ids(redis_client, "gone-clean")))
    await redis_client.xreadgroup(group, "gone-owing", {events_key(): ">"}, count=1)
    await redis_client.xreadgroup(group, "me", {events_key(): "0"})
    await asyncio.sleep(0.6)
    await trimmer(redis_client, consumer_retention=0.5).sweep_once()
    consumers = {c["name"] for c in await redis_client.xinfo_consumers(events_key(), group)}
    # One whose entries were not claimed yet stays; so does this process's own.
    assert consumers == {"gone-owing", "me"}


async def _pending_ids(redis: aioredis.Redis, consumer: str) -> list[str]:
    pending = await redis.xpending_range(events_key(), group_name("hook"), "-", "+", 10, consumer)
    return [p["message_id"] for p in pending]


async def test_dead_letters_expire_and_status_counts_without_reading_them(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliveries = Deliveries(redis_client, Bounds(dead_letters=1.0))
    event = {"id": "e-1", "data": {}}
    for n in range(3):
        await deliveries.dead_letter("hook", {**event, "id": f"e-{n}"}, 1, "gave up")
    assert await deliveries.dead_letter_count("hook") == 3

    async def no_reading(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("status decoded the dead letters")

    monkeypatch.setattr(deliveries, "dead_letters", no_reading)
    assert (await deliveries.status("hook"))["dead_letters"] == 3
    await asyncio.sleep(1.1)
    await deliveries.expire_dead_letters("hook")  # the sweep's step, with no add since
    assert await deliveries.dead_letter_count("hook") == 0


async def test_groups_nobody_serves_go_once_they_have_owed_for_a_while(
    redis_client: aioredis.Redis,
) -> None:
    """A subscription removed while no process ran: its group would hold trimming back."""
    await groups(redis_client, "removed", "configured", "brand-new")
    await emit(redis_client, 3)
    await asyncio.sleep(0.6)  # the entries are now older than the consumer retention below
    await redis_client.xgroup_destroy(events_key(), group_name("brand-new"))
    await groups(redis_client, "brand-new")  # just created at `$`: owes nothing yet
    known = {"configured": _failures_only()}
    with capture_logs() as logs:
        await trimmer(redis_client, known, consumer_retention=0.5).sweep_once()
    left = {g["name"] for g in await redis_client.xinfo_groups(events_key())}
    assert left == {group_name("configured"), group_name("brand-new")}
    [removed] = [e for e in logs if e["event"] == "consumer_group_removed"]
    assert removed["subscription"] == "removed"
