"""The set of lanes: one per subscription (bridge.lanes), changeable while running, plus the
loops every process runs for all of them: the outbox watch, trimming and sweeping.

A subscription seen for the first time gets consumer groups that start at the end of each
outbox (`$`): it receives new events; `jobs-bridge replay --since` sends it history. The
groups exist before this process's pollers emit anything (`prepare`), so a first start misses
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from bridge.config import BridgeConfig, SubscriptionBase
from bridge.deliveries import DAY, RETRY_AFTER_MAX, Bounds, Deliveries, retry_delay
from bridge.keys import LEGACY_GROUP, group_name, store_key
from bridge.lanes import DRAIN_SECONDS, LOOP_GRACE, Lane
from bridge.outbox import (
    Decoded,
    Trimmer,
    Watch,
    backlog,
    create_group,
    delete_group,
    legacy_start,
)
from bridge.sinks import DeliveryResult, Sink
from bridge.store import event_from_outbox
from bridge.tasks import Supervisor, describe, repeat

__all__ = ["RETRY_AFTER_MAX", "Dispatcher", "consumer_name", "replay_since", "retry_delay"]

log = structlog.get_logger(__name__)

REPLAY_BATCH = 500  # outbox entries read and queued per round trip by `replay --since`
LANE_GRACE = DRAIN_SECONDS + 2 * LOOP_GRACE  # a lane's stop: loops end, deliveries drain
TRIM_EVERY = 30.0
SWEEP_EVERY = 300.0

SinkFactory = Callable[[SubscriptionBase], Sink[Any]]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randbytes(2).hex()}"


class Dispatcher:
    """Every subscription of one bridge, each in a lane of its own, fed from the outboxes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        outbox_keys: Sequence[str],
        subscriptions: Sequence[SubscriptionBase],
        sinks: Mapping[str, Sink[Any]] | None = None,
        *,
        build_sink: SinkFactory | None = None,
        consumer: str | None = None,
        claim_idle: float = 120.0,
        block: float = 1.0,
        batch: int = 100,
        bounds: Bounds | None = None,
        outbox_retention: float = 7 * DAY,
        outbox_max_entries: int = 1_000_000,
        consumer_retention: float = 3600.0,
        on_attempt: Callable[[str, DeliveryResult], None] | None = None,
    ) -> None:
        self.redis = redis
        self.outbox_keys = list(outbox_keys)
        self.build_sink = build_sink
        self.on_attempt = on_attempt  # hears every attempt's result (metrics)
        self.deliveries = Deliveries(redis, bounds)
        self.consumer = consumer or consumer_name()
        self.claim_idle = claim_idle
        self.block = block
        self.batch = batch
        self.stats: Counter[str] = Counter()  # outbox entries: routed, claimed, skipped
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)  # per subscription
        self.watch = Watch(redis, self.outbox_keys, block)
        self.decoded = Decoded()  # shared by the lanes: each entry decoded once
        self.trimmer = Trimmer(
            redis,
            self.outbox_keys,
            self.deliveries,
            lambda: {name: lane.sub for name, lane in self.lanes.items()},
            retention=outbox_retention,
            max_entries=outbox_max_entries,
            consumer_retention=consumer_retention,
            consumer=self.consumer,
        )
        self.trim_every = TRIM_EVERY
        self.sweep_every = SWEEP_EVERY
        self.supervisor = Supervisor()  # the watch, trim and sweep loops, and every lane
        self.known: set[str] = set()  # every subscription of the last apply, enabled or not
        self.lanes: dict[str, Lane] = {}
        self._stop: asyncio.Event | None = None  # set while running
        self._changing = asyncio.Lock()
        self.prepared = asyncio.Event()  # set once every lane's groups exist
        for sub in subscriptions:
            self.known.add(sub.name)
            if sub.enabled:
                self.lanes[sub.name] = self._lane(sub, (sinks or {}).get(sub.name))

    @property
    def subscriptions(self) -> dict[str, SubscriptionBase]:
        """The subscriptions with a lane, by name."""
        return {name: lane.sub for name, lane in self.lanes.items()}

    # -- lifecycle -----------------------------------------------------------------------

    async def prepare(self, stop: asyncio.Event) -> None:
        """Create every lane's consumer groups before any event is emitted; while Redis does
        not answer, try again (with backoff) until it does or `stop` is set."""
        delay = 0.5
        while not stop.is_set():
            try:
                await self._create_groups()
                self.prepared.set()
                return
            except (RedisError, OSError) as exc:
                log.error("consumer_groups_not_created", error=describe(exc), retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(30.0, delay * 2)

    async def _create_groups(self) -> None:
        """Each lane's group on each outbox: at `$`, or where the shared group of before
        lanes (LEGACY_GROUP) stood, which then goes, with the rest of the old layout."""
        for key in self.outbox_keys:
            start = await legacy_start(self.redis, key)
            for lane in list(self.lanes.values()):
                await create_group(self.redis, key, lane.group, start or "$")
            if start is not None:
                await delete_group(self.redis, key, LEGACY_GROUP)
                log.warning("legacy_group_replaced", stream=key, group=LEGACY_GROUP, start=start)
        if moved := await self.deliveries.migrate_legacy():
            log.warning("legacy_delivery_state_moved", entries=moved)

    async def run(self, stop: asyncio.Event) -> None:
        if not self.prepared.is_set():
            await self.prepare(stop)
        self._stop = stop
        self.supervisor.start("dispatcher:watch", self.watch.run, stop)
        for name, step, pause in (
            ("trim", self.trimmer.trim_once, self.trim_every),
            ("sweep", self.trimmer.sweep_once, self.sweep_every),
        ):
            self.supervisor.start(
                f"dispatcher:{name}", functools.partial(repeat, step=step, pause=pause), stop
            )
        for lane in self.lanes.values():
            self._start(lane)
        log.info("dispatcher_started", consumer=self.consumer, subscriptions=len(self.lanes))
        stopped = False
        try:
            await stop.wait()
            stopped = True
        finally:
            self._stop = None
            for lane in self.lanes.values():
                lane.stop.set()
            await self.supervisor.finish(grace=LANE_GRACE if stopped else 0)
            totals = sum(self.counts.values(), Counter())
            log.info("dispatcher_stopped", consumer=self.consumer, **self.stats, **totals)

    # -- changing the subscriptions ------------------------------------------------------

    async def apply(
        self,
        subscriptions: Iterable[SubscriptionBase],
        sinks: Mapping[str, Sink[Any]] | None = None,
    ) -> None:
        """Make `subscriptions` the set this dispatcher delivers to, while it runs (or not).

        New names get a lane whose groups start at `$` (new events). A removed name's lane
        stops (deliveries in flight get DRAIN_SECONDS) and its consumer groups are deleted, so
        it never holds back trimming; its retries stop, its attempt log and dead letters stay.
        A subscription whose config changed restarts with the new config and a new sink; one
        turned `enabled: false` stops but keeps its groups (what it misses waits for it, up to
        `outbox_max_entries`). `sinks`: ready sinks by name, else `build_sink` makes them.
        """
        wanted = {sub.name: sub for sub in subscriptions}
        async with self._changing:
            for name, lane in list(self.lanes.items()):
                sub = wanted.get(name)
                if sub is None or not sub.enabled or sub != lane.sub:
                    await self._remove(name)
            for name in self.known - set(wanted):
                for key in self.outbox_keys:
                    await delete_group(self.redis, key, group_name(name))
                log.info("subscription_removed", subscription=name)
            for name, sub in wanted.items():
                if sub.enabled and name not in self.lanes:
                    lane = self._lane(sub, (sinks or {}).get(name))
                    await lane.create_groups()
                    self.lanes[name] = lane
                    if self._stop is not None:
                        self._start(lane)
            self.known = set(wanted)

    def _lane(self, sub: SubscriptionBase, sink: Sink[Any] | None) -> Lane:
        if sink is None:
            if self.build_sink is None:
                raise ValueError(f"no sink for subscription {sub.name!r}, and no build_sink")
            sink = self.build_sink(sub)
        return Lane(
            self.redis,
            self.outbox_keys,
            sub,
            sink,
            self.deliveries,
            self.watch,
            decoded=self.decoded,
            consumer=self.consumer,
            claim_idle=self.claim_idle,
            block=self.block,
            batch=self.batch,
            counts=self.counts[sub.name],
            stats=self.stats,
            on_attempt=self.on_attempt,
        )

    def _start(self, lane: Lane) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            return
        self.supervisor.adopt(lane.supervisor)
        self.supervisor.start(f"lane:{lane.name}", lane.run, lane.stop)

    async def _remove(self, name: str) -> None:
        lane = self.lanes.pop(name)
        lane.stop.set()
        await self.supervisor.retire(f"lane:{name}", grace=LANE_GRACE)
        self.supervisor.disown(lane.supervisor)

    async def set_outboxes(self, outbox_keys: Sequence[str]) -> None:
        """Read these outboxes from now on (stores added or removed by a reload). Each lane
        gets its group on a new one (a store's outbox and groups outlive its removal, so one
        that comes back goes on where it stood); the watch, trimmer and lanes read the list."""
        async with self._changing:
            for key in outbox_keys:
                if key not in self.outbox_keys:
                    for lane in self.lanes.values():
                        await create_group(self.redis, key, lane.group, "$")
            self.outbox_keys = list(outbox_keys)
            self.watch.outbox_keys = list(outbox_keys)
            self.trimmer.outbox_keys = list(outbox_keys)
            for lane in self.lanes.values():
                lane.outbox_keys = list(outbox_keys)

    # -- for readers ---------------------------------------------------------------------

    async def backlog(self, subscription: str) -> dict[str, int]:
        """Events `subscription` still owes over every outbox (see bridge.outbox.backlog)."""
        return await backlog(self.redis, self.outbox_keys, subscription)


async def replay_since(
    redis: aioredis.Redis, config: BridgeConfig, sub: SubscriptionBase, since: float
) -> int:
    """Queue every outbox event since `since` (epoch seconds) that `sub` would receive."""
    deliveries = Deliveries(redis)
    await deliveries.register(sub.name)
    queued = 0
    for store in config.stores:
        key = store_key(store.name, "events")
        cursor = f"{int(since * 1000)}-0"
        while entries := await redis.xrange(key, min=cursor, count=REPLAY_BATCH):
            events = [event_from_outbox(fields) for _entry_id, fields in entries]
            queued += await deliveries.enqueue(
                sub.name, (e for e in events if sub.filter.matches_event(e))
            )
            cursor = "(" + entries[-1][0]
    return queued
