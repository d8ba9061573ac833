"""The outbox as delivery sees it: consumer groups, waking the readers, trimming, backlog.

Each subscription reads every outbox stream through a consumer group of its own
(bridge.keys.group_name). An entry may go once no group owes it any more and it is older than
`outbox_retention`; a hard cap (`outbox_max_entries`) is the only exception, and what it
drops is dead-lettered for each subscription that still owed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from bridge.config import SubscriptionBase
from bridge.deliveries import Deliveries
from bridge.events import encode
from bridge.keys import LEGACY_GROUP, group_name, subscription_of, trim_lease_key
from bridge.slots import by_slot
from bridge.store import event_from_outbox

log = structlog.get_logger(__name__)

LAG_CAP = 100_000  # counting further than this (Redis < 7 has no `lag`) costs more than it tells
OVERFLOW_BATCH = 500  # entries dead-lettered and trimmed per round trip past the hard cap
DECODED_MAX = 2048  # outbox entries whose event and body a process keeps decoded


def is_nogroup(exc: BaseException) -> bool:
    """The group or its stream is gone: Redis lost its data (or someone deleted them)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def create_group(redis: aioredis.Redis, key: str, group: str, start: str) -> bool:
    """Create `group` on stream `key` at `start` (`$`: new entries only); False if it exists."""
    try:
        await redis.xgroup_create(key, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


async def delete_group(redis: aioredis.Redis, key: str, group: str) -> None:
    with contextlib.suppress(ResponseError):  # no stream: nothing to delete
        await redis.xgroup_destroy(key, group)


def next_id(entry_id: str) -> str:
    """The smallest stream id after `entry_id`."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _older(a: str, b: str) -> str:
    return a if _order(a) <= _order(b) else b


async def _groups(redis: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    try:
        return list(await redis.xinfo_groups(key))
    except ResponseError:  # no stream (yet, or any more)
        return []


async def _lag(redis: aioredis.Redis, key: str, info: Mapping[str, Any]) -> int:
    lag = info.get("lag")
    if lag is None:  # Redis before 7, or a group behind a trim: count what follows its cursor
        after = await redis.xrange(key, min=f"({info['last-delivered-id']}", count=LAG_CAP)
        lag = len(after)
    return int(lag)


async def outbox_status(redis: aioredis.Redis, key: str) -> dict[str, int | None]:
    """One outbox stream: its length; entries in delivery (pending, summed over every
    subscription); and what the furthest-behind subscription has yet to read (lag)."""
    length = int(await redis.xlen(key))
    groups = [g for g in await _groups(redis, key) if subscription_of(g["name"]) is not None]
    if not groups:
        return {"length": length, "pending": None, "lag": length}
    lags = [await _lag(redis, key, g) for g in groups]
    return {"length": length, "pending": sum(int(g["pending"]) for g in groups), "lag": max(lags)}


async def backlog(
    redis: aioredis.Redis, outbox_keys: Sequence[str], subscription: str
) -> dict[str, int]:
    """What one subscription still owes over every outbox: entries it has not read yet (lag)
    and entries it read and has not finished (pending); `events` is their sum."""
    group = group_name(subscription)
    lag = pending = 0
    for key in outbox_keys:
        info = next((g for g in await _groups(redis, key) if g["name"] == group), None)
        if info is not None:
            lag += await _lag(redis, key, info)
            pending += int(info["pending"])
    return {"events": lag + pending, "lag": lag, "pending": pending}


async def oldest_owed(
    redis: aioredis.Redis, key: str, groups: Sequence[Mapping[str, Any]]
) -> str | None:
    """The oldest entry of `key` that one of `groups` has not finished; None when none is."""
    oldest: str | None = None
    for info in groups:
        owed: list[str] = []
        if int(info["pending"]):
            summary = await redis.xpending(key, info["name"])
            if summary["min"]:
                owed.append(summary["min"])
        after = await redis.xrange(key, min=f"({info['last-delivered-id']}", count=1)
        if after:
            owed.append(after[0][0])
        for entry_id in owed:
            oldest = entry_id if oldest is None else _older(oldest, entry_id)
    return oldest


async def legacy_start(redis: aioredis.Redis, key: str) -> str | None:
    """Where the consumer groups replacing the old shared one (LEGACY_GROUP) start: just
    before the oldest entry it had not finished. None when there is no such group."""
    info = next((g for g in await _groups(redis, key) if g["name"] == LEGACY_GROUP), None)
    if info is None:
        return None
    oldest = await oldest_owed(redis, key, [info])
    if oldest is None:
        return str(info["last-delivered-id"])
    before = await redis.xrevrange(key, max=f"({oldest}", count=1)
    return before[0][0] if before else "0"


class Decoded:
    """Outbox entries as events and the bytes to send, decoded once per process: every lane
    reads the same entries at about the same time, and decoding and encoding are, after the
    sending itself, the costliest steps of a delivery. The events are shared: read-only."""

    def __init__(self, size: int = DECODED_MAX) -> None:
        self.size = size
        self._entries: dict[tuple[str, str], tuple[dict[str, Any], bytes]] = {}

    def get(self, key: str, entry_id: str, fields: dict[str, str]) -> tuple[dict[str, Any], bytes]:
        """The event of entry `entry_id` of stream `key`, and its body; raises KeyError or
        ValueError for an unreadable entry."""
        found = self._entries.get((key, entry_id))
        if found is None:
            event = event_from_outbox(fields)
            found = (event, encode(event))
            if len(self._entries) >= self.size:  # the oldest goes (dicts keep insertion order)
                del self._entries[next(iter(self._entries))]
            self._entries[(key, entry_id)] = found
        return found


class Watch:
    """One blocking read per process over every outbox stream: on new entries it wakes every
    lane, which then reads its own group without blocking a connection of its own. On a
    cluster, one such read per hash slot of the outboxes (a follower each, all at once)."""

    def __init__(self, redis: aioredis.Redis, outbox_keys: Sequence[str], block: float) -> None:
        self.redis = redis
        self.outbox_keys = list(outbox_keys)  # a reload may change them: read each round
        self.block = block
        self._listeners: set[asyncio.Event] = set()

    def listen(self) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def forget(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)

    def wake(self) -> None:
        for event in self._listeners:
            event.set()

    async def run(self, stop: asyncio.Event) -> None:
        """A follower for each slot the outboxes are in (one on a single Redis); a slot that
        a reload adds gets its own within `block`. A follower that fails ends the watch."""
        followers: dict[int, asyncio.Task[None]] = {}
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                for slot, task in list(followers.items()):
                    if task.done():
                        del followers[slot]
                        task.result()  # (its slot has no outbox left, or it raises)
                for slot in by_slot(self.redis, self.outbox_keys).keys() - followers.keys():
                    followers[slot] = asyncio.create_task(self._follow(slot, stop))
                waiting: list[asyncio.Future[Any]] = [stopped, *followers.values()]
                await asyncio.wait(waiting, timeout=self.block, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting = [stopped, *followers.values()]
            for future in waiting:
                future.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    async def _follow(self, slot: int, stop: asyncio.Event) -> None:
        """Block on the outboxes of one slot; wake the lanes at each new entry."""
        last: dict[str, str] = {}
        while not stop.is_set():
            keys = by_slot(self.redis, self.outbox_keys).get(slot)
            if not keys:
                return
            last = {key: last.get(key, "$") for key in keys}
            reply = await self.redis.xread(last, count=1, block=int(self.block * 1000))
            if not reply:
                continue
            # Jump to each stream's newest entry before waking: lanes read everything up to it,
            # and anything newer wakes them again.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, _entries in reply:
                    pipe.xrevrange(key, count=1)
                newest = await pipe.execute()
            for (key, entries), found in zip(reply, newest, strict=True):
                last[key] = found[0][0] if found else entries[-1][0]
            self.wake()


class Trimmer:
    """Trims each outbox to what no subscription owes and `retention` no longer keeps; removes
    consumers long gone; expires dead letters. Idempotent: every replica may run it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        outbox_keys: Sequence[str],
        deliveries: Deliveries,
        subscriptions: Callable[[], Mapping[str, SubscriptionBase]],
        *,
        retention: float,
        max_entries: int,
        consumer_retention: float,
        consumer: str,
    ) -> None:
        self.redis = redis
        self.outbox_keys = list(outbox_keys)
        self.deliveries = deliveries
        self.subscriptions = subscriptions
        self.retention = retention
        self.max_entries = max_entries
        self.consumer_retention = consumer_retention
        self.consumer = consumer
        self.lease = 60.0
        self._token = f"{consumer}-{os.getpid()}"

    async def trim_once(self) -> None:
        for key in self.outbox_keys:
            lease = trim_lease_key(key)
            if not await self.redis.set(lease, self._token, nx=True, px=int(self.lease * 1000)):
                continue  # another replica trims this one now
            try:
                await self._trim(key)
            finally:
                with contextlib.suppress(RedisError):
                    await self.redis.delete(lease)

    async def _trim(self, key: str) -> None:
        groups = await _groups(self.redis, key)
        cut = f"{int((time.time() - self.retention) * 1000)}-0"
        owed = await oldest_owed(self.redis, key, groups)
        minid = cut if owed is None else _older(cut, owed)
        removed = await self.redis.xtrim(key, minid=minid, approximate=False)
        if removed:
            log.debug("outbox_trimmed", stream=key, removed=removed, minid=minid)
        length = int(await self.redis.xlen(key))
        if length > self.max_entries:
            await self._overflow(key, groups, length - self.max_entries)

    async def _overflow(self, key: str, groups: Sequence[Mapping[str, Any]], excess: int) -> None:
        """Past the hard cap: the oldest entries go, dead-lettered for whoever owed them."""
        reason = f"dropped from the outbox: over outbox_max_entries ({self.max_entries})"
        dropped = dead = 0
        while dropped < excess:
            entries = await self.redis.xrange(key, count=min(OVERFLOW_BATCH, excess - dropped))
            if not entries:
                break
            for info in groups:
                dead += await self._dead_letter_owed(key, info, entries, reason)
            await self.redis.xtrim(key, minid=next_id(entries[-1][0]), approximate=False)
            dropped += len(entries)
        log.error("outbox_overflow", stream=key, dropped=dropped, dead_lettered=dead, reason=reason)

    async def _dead_letter_owed(
        self,
        key: str,
        info: Mapping[str, Any],
        entries: Sequence[tuple[str, dict[str, str]]],
        reason: str,
    ) -> int:
        name = subscription_of(info["name"])
        if name is None:
            return 0
        first, last = entries[0][0], entries[-1][0]
        pending = await self.redis.xpending_range(key, info["name"], first, last, len(entries))
        held = {p["message_id"] for p in pending}
        read_up_to = _order(info["last-delivered-id"])
        sub = self.subscriptions().get(name)
        count = 0
        for entry_id, fields in entries:
            if entry_id not in held and _order(entry_id) <= read_up_to:
                continue  # the group had finished it
            event = event_from_outbox(fields)
            if sub is not None and not sub.filter.matches_event(event):
                continue
            await self.deliveries.dead_letter(name, event, 0, reason)
            count += 1
        if held:
            await self.redis.xack(key, info["name"], *held)
        return count

    async def sweep_once(self) -> None:
        """Consumers idle past `consumer_retention` with nothing pending leave their groups
        (their entries were claimed by then); groups nobody serves go; dead letters past
        retention go."""
        for key in self.outbox_keys:
            for info in await _groups(self.redis, key):
                if subscription_of(info["name"]) is None:
                    continue
                left = await self._remove_dead_consumers(key, info["name"])
                if not left:
                    await self._remove_if_orphaned(key, info)
        for name in await self.deliveries.known():
            await self.deliveries.expire_dead_letters(name)

    async def _remove_dead_consumers(self, key: str, group: str) -> int:
        """Remove the group's consumers long gone; how many consumers are left."""
        horizon = self.consumer_retention * 1000
        left = 0
        for consumer in await self.redis.xinfo_consumers(key, group):
            gone = int(consumer["pending"]) == 0 and int(consumer["idle"]) > horizon
            if consumer["name"] == self.consumer or not gone:
                left += 1
                continue
            await self.redis.xgroup_delconsumer(key, group, consumer["name"])
            log.info("consumer_removed", stream=key, group=group, consumer=consumer["name"])
        return left

    async def _remove_if_orphaned(self, key: str, info: Mapping[str, Any]) -> None:
        """A group of a subscription removed while no process ran (so no `apply` deleted it)
        would hold trimming back until the hard cap. It goes once it is unknown here, has no
        consumer, and has owed an entry for longer than `consumer_retention`: a replica with a
        newer config serving it would be its consumer, and a group just created at `$` owes
        nothing that old."""
        name = subscription_of(info["name"])
        if name is None or name in self.subscriptions():
            return
        owed = await oldest_owed(self.redis, key, [info])
        if owed is None or _order(owed)[0] > (time.time() - self.consumer_retention) * 1000:
            return
        await delete_group(self.redis, key, info["name"])
        log.warning(
            "consumer_group_removed", stream=key, group=info["name"], subscription=name, owed=owed
        )
