"""Consumes every store's outbox, routes events to subscriptions, retries, and dead-letters.

An outbox entry is acknowledged only after each of its deliveries has succeeded or has been
handed to the retry schedule or the dead-letter stream, so a crash at any point loses nothing:
unacknowledged entries are claimed again (XAUTOCLAIM) and sent again with the same event id.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from bridge.config import BridgeConfig, SubscriptionBase, format_duration
from bridge.deliveries import Deliveries, Health, PendingRetry
from bridge.events import encode
from bridge.keys import store_key
from bridge.sinks import DeliveryResult, Sink
from bridge.store import event_from_outbox
from bridge.tasks import Supervisor, describe, finish

log = structlog.get_logger(__name__)

GROUP = "dispatch"
RETRY_AFTER_MAX = 3600.0  # a destination may slow us down, but not park an event for days
HEALTH_CACHE_SECONDS = 1.0
DRAIN_SECONDS = 10.0  # how long a stop waits for deliveries in flight
ACK_EVERY = 0.05  # seconds between batched acknowledgements of handled outbox entries
REPLAY_BATCH = 500  # outbox entries read and queued per round trip by `replay --since`
LOOP_GRACE = 5.0  # how long a stop waits for the consume/retry/claim loops to end their step


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randbytes(2).hex()}"


def retry_delay(schedule: Sequence[float], attempt: int, retry_after: float | None) -> float | None:
    """Seconds until the next try after `attempt` failed tries, or None when none are left.

    +-20 % jitter keeps many failed deliveries from coming due in one burst.
    """
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
    return delay


class Dispatcher:
    """Every subscription of one bridge, fed from the outbox streams of its stores."""

    def __init__(
        self,
        redis: aioredis.Redis,
        outbox_keys: Sequence[str],
        subscriptions: Sequence[SubscriptionBase],
        sinks: dict[str, Sink],
        *,
        consumer: str | None = None,
        claim_idle: float = 120.0,
        block: float = 1.0,
        batch: int = 100,
        max_in_flight: int = 200,
        on_attempt: Callable[[str, DeliveryResult], None] | None = None,
        build_sink: Callable[[SubscriptionBase], Sink] | None = None,
    ) -> None:
        self.redis = redis
        self.outbox_keys = list(outbox_keys)
        self.subscriptions = {s.name: s for s in subscriptions if s.enabled}
        self.sinks = sinks
        self.deliveries = Deliveries(redis)
        self.consumer = consumer or consumer_name()
        self.claim_idle = claim_idle
        self.block = block
        self.batch = batch
        self.on_attempt = on_attempt  # hears every attempt's result (metrics)
        self.stats: Counter[str] = Counter()  # outbox entries: routed, claimed
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)  # per subscription
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._per_subscription = {
            s.name: asyncio.Semaphore(s.concurrency) for s in self.subscriptions.values()
        }
        self._health: dict[str, tuple[float, Health]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Handled outbox entries, acknowledged in batches: one XACK per stream every ACK_EVERY
        # instead of one per entry. A crash before the flush only means a redelivery.
        self._acks: defaultdict[str, list[str]] = defaultdict(list)
        self.supervisor = Supervisor()  # the consume, retry, ack and claim loops
        self._build_sink = build_sink  # for apply()
        self._retiring: set[asyncio.Task[None]] = set()  # sinks apply() replaced, closing

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        for key in self.outbox_keys:
            try:
                # From the start of the stream: events written before the first dispatcher
                # ever ran are delivered too.
                await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        for sink in self.sinks.values():
            await sink.start()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        log.info("dispatcher_started", consumer=self.consumer, subscriptions=len(self.sinks))
        for name, step, pause in (
            ("consume", self._consume_once, 0.0),
            ("retry", self._retry_once, 1.0),
            ("ack", self._flush_acks, ACK_EVERY),
            ("claim", self._claim_once, self.claim_idle / 2),
        ):
            loop = functools.partial(self._loop, step=step, pause=pause)
            self.supervisor.start(f"dispatcher:{name}", loop, stop)
        stopped = False
        try:
            await stop.wait()
            stopped = True
        finally:
            # Stopped: let loops end their step and deliveries finish. Cancelled: end now;
            # unacknowledged entries are claimed again by the next dispatcher.
            stop.set()  # a loop that swallowed its cancellation still ends at its next check
            await self.supervisor.finish(grace=LOOP_GRACE if stopped else 0)
            await finish(set(self._tasks), grace=DRAIN_SECONDS if stopped else 0)
            if stopped:
                await self._flush_acks()
            await finish(set(self._retiring), grace=0)
            for sink in self.sinks.values():
                await sink.close()
            totals = sum(self.counts.values(), Counter())
            log.info("dispatcher_stopped", consumer=self.consumer, **self.stats, **totals)

    async def _loop(self, stop: asyncio.Event, step: Any, pause: float) -> None:
        """Run `step` until stopped; a step that returns True has more work and runs again.

        A failed step is retried here with backoff; what escapes (not an Exception, or a stray
        CancelledError) ends the loop, and its supervisor restarts it.
        """
        failures = 0
        while not stop.is_set():
            try:
                more = await step()
                failures = 0
                wait = 0.0 if more is True else pause
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                wait = min(30.0, 0.5 * 2**failures)
                log.warning(
                    "dispatch_loop_failed", step=step.__name__, error=describe(exc), retry_in=wait
                )
            if wait:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except TimeoutError:
                    pass

    # -- the outbox ----------------------------------------------------------------------

    async def _consume_once(self) -> None:
        replies = await self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {key: ">" for key in self.outbox_keys},
            count=self.batch,
            block=int(self.block * 1000),
        )
        for key, entries in replies or []:
            for entry_id, fields in entries:
                await self._spawn(key, entry_id, fields)

    async def _flush_acks(self) -> None:
        for key in list(self._acks):
            ids = self._acks.pop(key)
            if ids:
                await self.redis.xack(key, GROUP, *ids)

    async def _claim_once(self) -> None:
        """Take over entries another dispatcher read but never acknowledged (it died)."""
        for key in self.outbox_keys:
            cursor = "0-0"
            while True:
                reply = await self.redis.xautoclaim(
                    key, GROUP, self.consumer, int(self.claim_idle * 1000), cursor, count=100
                )
                cursor, entries = reply[0], reply[1]
                for entry_id, fields in entries:
                    if not fields:  # trimmed from the stream meanwhile
                        await self.redis.xack(key, GROUP, entry_id)
                        continue
                    self.stats["claimed"] += 1
                    await self._spawn(key, entry_id, fields)
                if cursor == "0-0":
                    break

    async def _spawn(self, key: str, entry_id: str, fields: dict[str, str]) -> None:
        await self._in_flight.acquire()
        task = asyncio.create_task(self._handle_entry(key, entry_id, fields))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.release()
        if not task.cancelled() and task.exception() is not None:
            # Not acknowledged: the entry is claimed and handled again later.
            log.warning("outbox_entry_failed", error=repr(task.exception()))

    async def _handle_entry(self, key: str, entry_id: str, fields: dict[str, str]) -> None:
        try:
            event = event_from_outbox(fields)
        except (KeyError, ValueError) as exc:
            # Unreadable entries would come back forever: acknowledge, and say so loudly.
            log.error("outbox_entry_invalid", stream=key, entry_id=entry_id, error=repr(exc))
            self.stats["invalid_entries"] += 1
            await self.redis.xack(key, GROUP, entry_id)
            return
        body = encode(event)
        targets = [sub for sub in self.subscriptions.values() if _matches(sub, event)]
        await asyncio.gather(*(self._first_attempt(sub, event, body) for sub in targets))
        self._acks[key].append(entry_id)
        self.stats["routed"] += 1

    async def _first_attempt(
        self, sub: SubscriptionBase, event: dict[str, Any], body: bytes
    ) -> None:
        health = await self._cached_health(sub.name)
        if not health.enabled:
            await self.deliveries.dead_letter(
                sub.name, event, 0, f"subscription disabled: {health.disabled_reason}"
            )
            self.counts[sub.name]["dead_lettered"] += 1
            return
        if sub.name not in self.sinks:  # removed by apply() since the event was routed
            return
        await self.attempt(sub, event, body, attempt=1)

    # -- retries -------------------------------------------------------------------------

    async def _retry_once(self) -> bool:
        """Attempt the due retries, a batch at a time. True when a full batch was due."""
        due = await self.deliveries.claim_due(limit=self.batch)
        await asyncio.gather(*(self._retry(pending) for pending in due))
        return len(due) == self.batch

    async def _retry(self, pending: PendingRetry) -> None:
        sub = self.subscriptions.get(pending.subscription)
        if pending.event is None:
            await self.deliveries.settle(pending.subscription, pending.event_id)
            return
        if sub is None or pending.subscription not in self.sinks:
            await self.deliveries.dead_letter(
                pending.subscription, pending.event, pending.attempts,
                "subscription is no longer configured",
            )  # fmt: skip
            return
        health = await self._cached_health(sub.name)
        if not health.enabled:
            await self.deliveries.dead_letter(
                sub.name, pending.event, pending.attempts,
                f"subscription disabled: {health.disabled_reason}",
            )  # fmt: skip
            return
        await self.attempt(
            sub, pending.event, encode(pending.event), pending.attempts + 1, scheduled=True
        )

    # -- one attempt ---------------------------------------------------------------------

    async def attempt(
        self,
        sub: SubscriptionBase,
        event: dict[str, Any],
        body: bytes,
        attempt: int,
        *,
        scheduled: bool = False,
    ) -> DeliveryResult:
        """Deliver once; then record it and decide: done, retry later, or dead-letter.

        `scheduled`: the delivery came off the retry schedule (a retry or a replay), whose
        entry must be cleared once it is done.
        """
        sink = self.sinks[sub.name]
        async with self._per_subscription[sub.name]:
            started = time.perf_counter()
            try:
                result = await sink.deliver(event, body)
            except Exception as exc:  # a sink bug must not stop the dispatcher
                result = DeliveryResult(
                    ok=False,
                    reason=f"sink error: {type(exc).__name__}",
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
                log.exception("sink_failed", subscription=sub.name, event_id=event["id"])
        await self.deliveries.record_attempt(sub.name, event["id"], attempt, result)
        if self.on_attempt is not None:
            self.on_attempt(sub.name, result)
        bound = log.bind(subscription=sub.name, event_id=event["id"], attempt=attempt)
        if result.ok:
            self.counts[sub.name]["delivered"] += 1
            if scheduled:
                await self.deliveries.settle(sub.name, event["id"])
            bound.debug("delivery_succeeded", status=result.status)
            return result
        self.counts[sub.name]["failed_attempts"] += 1
        reason = result.reason or "delivery failed"
        if result.disable:
            await self._disable(sub.name, reason)
        elif result.retryable:
            health = await self.deliveries.health(sub.name)
            if health.failing_since and time.time() - health.failing_since > sub.disable_after:
                ago = format_duration(time.time() - health.failing_since, human=True)
                reason = f"failing since {ago} ago: {reason}"
                await self._disable(sub.name, reason)
            else:
                delay = retry_delay(sub.retry_schedule, attempt, result.retry_after)
                if delay is not None:
                    await self.deliveries.schedule_retry(
                        sub.name, event, attempt, time.time() + delay
                    )
                    self.counts[sub.name]["retries_scheduled"] += 1
                    bound.info("delivery_failed", reason=reason, retry_in=round(delay, 2))
                    return result
                reason = f"gave up after {attempt} attempts: {reason}"
        await self.deliveries.dead_letter(sub.name, event, attempt, reason)
        self.counts[sub.name]["dead_lettered"] += 1
        bound.warning("delivery_dead_lettered", reason=reason)
        return result

    async def _disable(self, subscription: str, reason: str) -> None:
        await self.deliveries.disable(subscription, reason)
        self._health.pop(subscription, None)
        log.error("subscription_disabled", subscription=subscription, reason=reason)

    async def _cached_health(self, subscription: str) -> Health:
        now = time.monotonic()
        cached = self._health.get(subscription)
        if cached is None or now - cached[0] > HEALTH_CACHE_SECONDS:
            cached = (now, await self.deliveries.health(subscription))
            self._health[subscription] = cached
        return cached[1]

    # -- live reconfiguration (issue 12: the per-subscription lanes bring their own) --------

    async def apply(self, subscriptions: Sequence[SubscriptionBase]) -> None:
        """Deliver to `subscriptions` from now on: new ones start, removed ones stop, changed
        ones go on with their new settings and a new sink. A replaced sink is closed once the
        deliveries it has in flight had their time."""
        if self._build_sink is None:
            raise RuntimeError("this dispatcher was made without build_sink")
        wanted = {sub.name: sub for sub in subscriptions if sub.enabled}
        sinks: dict[str, Sink] = {}
        for name, sub in wanted.items():
            current = self.sinks.get(name)
            if current is not None and self.subscriptions.get(name) == sub:
                sinks[name] = current
                continue
            sinks[name] = self._build_sink(sub)
            await sinks[name].start()
            self._per_subscription[name] = asyncio.Semaphore(sub.concurrency)
        retired = [sink for name, sink in self.sinks.items() if sinks.get(name) is not sink]
        self.subscriptions, self.sinks = wanted, sinks
        for sink in retired:
            task = asyncio.create_task(_retire(sink), name=f"retire:{sink.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def set_outboxes(self, outbox_keys: Sequence[str]) -> None:
        """Read these outbox streams from now on (stores added or removed by a reload)."""
        for key in outbox_keys:
            if key not in self.outbox_keys:
                await self._create_group(key)
        self.outbox_keys = list(outbox_keys)

    async def _create_group(self, key: str) -> None:
        try:
            await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def _retire(sink: Sink) -> None:
    """Close a sink apply() replaced, after its deliveries in flight had their timeout."""
    try:
        await asyncio.sleep(sink.timeout)
    finally:
        await sink.close()


async def replay_since(
    redis: aioredis.Redis, config: BridgeConfig, sub: SubscriptionBase, since: float
) -> int:
    """Queue every outbox event since `since` (epoch seconds) that `sub` would receive."""
    deliveries = Deliveries(redis)
    queued = 0
    for store in config.stores:
        key = store_key(store.name, "events")
        cursor = f"{int(since * 1000)}-0"
        while entries := await redis.xrange(key, min=cursor, count=REPLAY_BATCH):
            events = [event_from_outbox(fields) for _entry_id, fields in entries]
            queued += await deliveries.enqueue(sub.name, (e for e in events if _matches(sub, e)))
            cursor = "(" + entries[-1][0]
    return queued


def _matches(sub: SubscriptionBase, event: dict[str, Any]) -> bool:
    data = event["data"]
    return sub.filter.matches(data["store"], data["source"], data["job"]["type"], data["status"])
