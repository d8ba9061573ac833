"""One subscription's way through the outbox: its consumer group, its workers, its retries.

A lane reads every outbox stream through its subscription's own consumer group, so a slow,
failing or disabled subscription holds back no other (on a Redis Cluster, the outboxes of each
hash slot with a call of their own: bridge.slots). An entry is acknowledged once its
delivery succeeded or was handed to the retry schedule or the dead-letter stream; entries that
do not match the filter are acknowledged at once. Entries a lane holds (read or claimed, not
yet acknowledged) are kept fresh with `XCLAIM ... JUSTID` every `claim_idle / 3`, so only
the entries of a consumer that is really gone ever become idle long enough to be claimed.
Under `ordering: job` each batch is admitted first (bridge.ordering): an entry whose job has
an event in flight parks, and is acknowledged once parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog

from bridge.attemptlog import AttemptLog
from bridge.config import SubscriptionBase, format_duration
from bridge.deliveries import Deliveries, Health, PendingRetry, retry_delay
from bridge.events import encode
from bridge.keys import group_name
from bridge.ordering import JobOrder
from bridge.outbox import Decoded, Watch, create_group, is_nogroup
from bridge.sinks import DeliveryResult, Sink
from bridge.slots import xreadgroup
from bridge.tasks import Supervisor, describe, repeat
from bridge.workers import Workers

log = structlog.get_logger(__name__)

HEALTH_CACHE_SECONDS = 1.0
DRAIN_SECONDS = 10.0  # how long a stop waits for deliveries in flight
ACK_EVERY = 0.05  # seconds between batched acknowledgements of handled outbox entries
LOOP_GRACE = 5.0  # how long a stop waits for a lane's loops to end their step
HEARTBEAT_BATCH = 500  # entry ids per XCLAIM heartbeat
RETRY_EVERY = 1.0  # seconds between looks at the retry schedule (a release looks at once)

Entry = tuple[str, dict[str, str]]  # an outbox entry: its id and fields
Wanted = tuple[str, dict[str, Any], bytes]  # an entry to deliver: id, event, body


class Lane:
    """Every delivery of one subscription: first attempts from the outbox, retries, claims."""

    def __init__(
        self,
        redis: aioredis.Redis,
        outbox_keys: Sequence[str],
        sub: SubscriptionBase,
        sink: Sink[Any],
        deliveries: Deliveries,
        watch: Watch,
        *,
        decoded: Decoded | None = None,
        consumer: str,
        claim_idle: float,
        block: float,
        batch: int,
        counts: Counter[str],
        stats: Counter[str],
        on_attempt: Callable[[str, DeliveryResult], None] | None = None,
    ) -> None:
        self.redis = redis
        self.outbox_keys = list(outbox_keys)
        self.sub = sub
        self.name = sub.name
        self.sink = sink
        self.deliveries = deliveries
        self.watch = watch
        self.decoded = decoded or Decoded()
        self.group = group_name(sub.name)
        self.attempts = AttemptLog(redis, sub.name, deliveries.bounds)
        self.order = JobOrder(redis, sub.name, self.group) if sub.ordering == "job" else None
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.block = block
        self.batch = batch
        self.counts = counts  # deliveries: delivered, failed_attempts, ...
        self.stats = stats  # outbox entries: routed, claimed, skipped
        self.claimed_through = 0.0  # monotonic start of the last complete claim pass
        self.on_attempt = on_attempt  # hears every attempt's result (metrics)
        # Deliveries in flight at once: each worker sends one after another while any wait.
        self.concurrency = sink.concurrency(sub.concurrency)
        # Entries read ahead of a free worker: enough to keep the workers busy, bounded.
        self.window = self.concurrency + batch
        # Read again once this few are left: every read takes at least half a batch, and the
        # workers still have work meanwhile (a read per finished delivery costs more than it).
        self.refill = self.concurrency + batch // 2
        self.held: defaultdict[str, set[str]] = defaultdict(set)  # read, not acknowledged
        self._read_failed = False  # entries may be ours in Redis and not in hand
        self._acks: defaultdict[str, list[str]] = defaultdict(list)
        self._room = asyncio.Event()
        self.workers = Workers(self.concurrency, self._delivery_failed, self._room.set)
        self._due = asyncio.Event()  # a retry became due now (a release): look at once
        self._wake: asyncio.Event | None = None
        self._health: tuple[float, Health] | None = None
        self._health_read: asyncio.Future[Health] | None = None  # the one read in flight
        self.stop = asyncio.Event()  # this lane's own: set by a global stop or by its removal
        self.supervisor = Supervisor()

    # -- lifecycle -----------------------------------------------------------------------

    async def create_groups(self, start: str = "$") -> None:
        """This subscription's group on every outbox (new ones start at `start`)."""
        for key in self.outbox_keys:
            await create_group(self.redis, key, self.group, start)

    async def run(self, stop: asyncio.Event) -> None:
        # Its groups exist (Dispatcher.prepare, apply); one missing now was lost: see _recover.
        await self.deliveries.register(self.name)
        self._wake = self.watch.listen()
        stopped = False
        try:
            await self.sink.start()
            # Entries this consumer read before (a lane restarted in this process) go first.
            await self._read_own_pending()
            for name, step, pause in (
                ("consume", self._consume_once, 0.0),
                ("ack", self._flush_acks, ACK_EVERY),
                ("retry", self._retry_once, 0.0),
                ("heartbeat", self._heartbeat_once, self.claim_idle / 3),
                ("claim", self._claim_once, self.claim_idle / 2),
            ):
                loop = functools.partial(repeat, step=step, pause=pause)
                self.supervisor.start(f"lane:{self.name}:{name}", loop, stop)
            await stop.wait()
            stopped = True
            self._due.set()  # the retry loop's wait ends
        finally:
            # Stopped: let loops end their step and deliveries finish. Cancelled or crashed:
            # end now; unacknowledged entries are taken again by the next run, or claimed.
            self.watch.forget(self._wake)
            await self.supervisor.finish(grace=LOOP_GRACE if stopped else 0)
            if stopped:  # what was emitted before the stop is delivered within the drain too
                with contextlib.suppress(Exception):
                    await self._read_new()
            await self.workers.finish(grace=DRAIN_SECONDS if stopped else 0)
            await self.attempts.close(grace=LOOP_GRACE)
            with contextlib.suppress(Exception):  # what was delivered is not sent again
                await self._flush_acks()
            self.held.clear()
            self._acks.clear()
            await self.sink.close()
            log.info("lane_stopped", subscription=self.name, **self.counts)

    # -- the outbox ----------------------------------------------------------------------

    async def _read(self, streams: dict[str, str], count: int, *, fresh: bool) -> dict[str, str]:
        """Read `streams` (key -> id) through the group (per slot: bridge.slots), handle what
        is not in hand already; the newest id read from each stream. A failed read may have
        been done, its reply lost (a node lost mid-pipeline): its entries are then taken
        again from this consumer's pending list before the next read (_consume_once)."""
        try:
            found = await xreadgroup(self.redis, self.group, self.consumer, streams, count)
        except BaseException:
            self._read_failed = True
            raise
        newest: dict[str, str] = {}
        for keys, replies in found:
            if is_nogroup(replies):
                await self._recover(replies, keys)
            elif not isinstance(replies, BaseException):
                for key, entries in replies or ():
                    held = self.held[key]
                    mine = [e for e in entries if e[1] and e[0] not in held]
                    await self._handle(key, mine, fresh=fresh)
                    if entries:
                        newest[key] = entries[-1][0]
        for _keys, failed in found:
            if isinstance(failed, BaseException) and not is_nogroup(failed):
                self._read_failed = True
                raise failed  # once what the other slots read is in hand
        return newest

    async def _read_own_pending(self) -> None:
        """Take again the entries this consumer read and does not hold (its lane restarted,
        or a read's reply was lost): its whole pending list, a batch at a time."""
        self._read_failed = False
        after = dict.fromkeys(self.outbox_keys, "0")
        while after:
            after = await self._read(after, self.batch, fresh=False)

    async def _recover(self, exc: BaseException, keys: list[str]) -> None:
        """The group is gone from `keys` (Redis, or the node of their slot, lost its data):
        create it again, from each stream's start."""
        log.error("state_lost", subscription=self.name, error=str(exc), group=self.group)
        for key in keys:
            self.held.pop(key, None)
            self._acks.pop(key, None)
        await self.deliveries.register(self.name)
        for key in keys:
            await create_group(self.redis, key, self.group, "0")

    async def _consume_once(self) -> bool:
        if self._read_failed:
            await self._read_own_pending()
        if not await self._has_room():
            return True
        assert self._wake is not None
        self._wake.clear()  # before the read: an entry added during it wakes the wait below
        if await self._read_new():
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=self.block)
        except TimeoutError:
            return True
        # Read what woke us in this step: a stop meanwhile still lets it be delivered.
        await self._read_new()
        return True

    async def _read_new(self) -> bool:
        """Read new entries, as many as there is room for; whether any came."""
        room = min(self.window - len(self.workers), self.batch)
        return bool(await self._read(dict.fromkeys(self.outbox_keys, ">"), room, fresh=True))

    async def _has_room(self) -> bool:
        """True when more deliveries may start; else wait until one ends (False)."""
        if len(self.workers) < self.refill:
            return True
        self._room.clear()
        await self._room.wait()
        return False

    async def _handle(self, key: str, entries: list[Entry], *, fresh: bool) -> None:
        """Entries now in this lane's hands: delivered, parked, or acknowledged at once.
        `fresh`: just read as new (not claimed, not read again), so in outbox order."""
        if not entries:
            return
        wanted: list[Wanted] | None = self._sort(key, entries)
        if self.order is not None and wanted:
            admitted = None
            try:
                wanted = admitted = await self._admit(key, entries, wanted, fresh)
            finally:
                if admitted is None:  # not kept fresh any more: claimed and handled later
                    self.held[key].difference_update(entry_id for entry_id, _ in entries)
        for entry_id, event, body in wanted or ():
            work = functools.partial(self._deliver_entry, key, entry_id, event, body)
            self.workers.submit(work, (key, entry_id))

    def _sort(self, key: str, entries: list[Entry]) -> list[Wanted]:
        """The entries to deliver; the others are acknowledged."""
        wanted: list[Wanted] = []
        for entry_id, fields in entries:
            self.held[key].add(entry_id)
            try:
                event, body = self.decoded.get(key, entry_id, fields)
            except (KeyError, ValueError) as exc:
                # Unreadable entries would come back forever: acknowledge, and say so loudly.
                log.error("outbox_entry_invalid", stream=key, entry_id=entry_id, error=repr(exc))
                self.stats["invalid_entries"] += 1
                self._acks[key].append(entry_id)
                continue
            if not self.sub.filter.matches_event(event):
                self.stats["skipped"] += 1
                self._acks[key].append(entry_id)
                continue
            self.stats["routed"] += 1
            wanted.append((entry_id, event, body))
        return wanted

    async def _admit(
        self, key: str, entries: list[Entry], wanted: list[Wanted], fresh: bool
    ) -> list[Wanted] | None:
        """Those of `wanted` that are their job's head; the others parked and are
        acknowledged, or (claimed, read again) are not in turn yet and are let go, to be
        claimed again. None when the lane stopped while an older batch was not yet admitted."""
        assert self.order is not None
        if fresh and not await self.order.wait_turn(key, entries[0][0], self.stop):
            return None
        if not fresh:
            turn = await self.order.in_turn(key, [entry_id for entry_id, _ in entries])
            later = {entry_id for entry_id, _ in entries[turn:]}
            self.held[key].difference_update(later)
            entries, wanted = entries[:turn], [w for w in wanted if w[0] not in later]
            if not wanted:
                return []
        heads = await self.order.admit(key, [(e, b) for _, e, b in wanted], entries[-1][0])
        parked = [w[0] for w, head in zip(wanted, heads, strict=True) if not head]
        self._acks[key] += parked
        self.stats["parked"] += len(parked)
        return [w for w, head in zip(wanted, heads, strict=True) if head]

    def _delivery_failed(self, tag: tuple[str, str] | None, error: BaseException) -> None:
        if tag is not None:  # not acknowledged, no longer kept fresh: claimed and sent later
            key, entry_id = tag
            self.held[key].discard(entry_id)
        if isinstance(error, Exception):
            log.warning("outbox_entry_failed", subscription=self.name, error=describe(error))

    async def _deliver_entry(
        self, key: str, entry_id: str, event: dict[str, Any], body: bytes
    ) -> None:
        health = await self._cached_health()
        if not health.enabled:
            await self._dead_letter(event, 0, f"subscription disabled: {health.disabled_reason}")
            self._acks[key].append(entry_id)
            return
        recorded = await self.attempt(event, body, attempt=1)
        recorded.add_done_callback(functools.partial(self._acknowledge, key, entry_id))

    def _acknowledge(self, key: str, entry_id: str, recorded: asyncio.Future[None]) -> None:
        """The entry's attempt is in the attempt log: the entry may go. Not written: the
        entry is no longer kept fresh, so it is claimed and delivered again later."""
        if recorded.cancelled() or recorded.exception() is not None:
            self.held[key].discard(entry_id)
        else:
            self._acks[key].append(entry_id)

    async def _flush_acks(self) -> None:
        for key in list(self._acks):
            ids = self._acks.pop(key)
            if ids:
                await self.redis.xack(key, self.group, *ids)
                self.held[key].difference_update(ids)

    async def _heartbeat_once(self) -> None:
        """Touch every held entry: its idle time restarts, so no other replica claims it."""
        for key, ids in list(self.held.items()):
            batch = list(ids)
            for start in range(0, len(batch), HEARTBEAT_BATCH):
                chunk = batch[start : start + HEARTBEAT_BATCH]
                try:
                    await self.redis.xclaim(key, self.group, self.consumer, 0, chunk, justid=True)
                except Exception as exc:
                    if not is_nogroup(exc):
                        raise  # (a lost group: the consume loop recovers it)

    async def _claim_once(self) -> None:
        """Take over entries a consumer that is gone read but never acknowledged."""
        started = time.monotonic()
        for key in self.outbox_keys:
            cursor = "0-0"
            while len(self.workers) < self.window:
                try:
                    reply = await self.redis.xautoclaim(
                        key, self.group, self.consumer, int(self.claim_idle * 1000), cursor,
                        count=max(1, min(100, self.window - len(self.workers))),
                    )  # fmt: skip
                except Exception as exc:
                    if not is_nogroup(exc):
                        raise
                    break
                cursor, entries = reply[0], reply[1]
                taken: list[Entry] = []
                for entry_id, fields in entries:
                    if entry_id in self.held[key]:
                        continue  # ours, in hand (a heartbeat came late)
                    if not fields:  # trimmed from the stream meanwhile
                        await self.redis.xack(key, self.group, entry_id)
                        continue
                    self.stats["claimed"] += 1
                    taken.append((entry_id, fields))
                await self._handle(key, taken, fresh=False)
                if cursor == "0-0":
                    break
        self.claimed_through = started  # every entry idle past claim_idle by then was seen

    # -- retries -------------------------------------------------------------------------

    async def _retry_once(self) -> bool:
        """Start the due retries, as many as there is room for; when that was all of them,
        wait for the next look (RETRY_EVERY, or a release)."""
        if not await self._has_room():
            return True
        self._due.clear()
        room = min(self.batch, self.window - len(self.workers))
        due = await self.deliveries.claim_due(self.name, limit=room)
        claimed = len(due)
        if self.order is not None:  # (a replayed dead letter may have to park)
            due = await self.order.take_turns(due)
        for pending in due:
            self.workers.submit(functools.partial(self._retry, pending))
        if claimed < room:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), RETRY_EVERY)
        return True

    async def _retry(self, pending: PendingRetry) -> None:
        if pending.event is None:
            await self.deliveries.settle(self.name, pending.event_id)
            return
        health = await self._cached_health()
        if not health.enabled:
            reason = f"subscription disabled: {health.disabled_reason}"
            await self._dead_letter(pending.event, pending.attempts, reason)
            return
        await self.attempt(
            pending.event, encode(pending.event), pending.attempts + 1, scheduled=True
        )

    # -- one attempt ---------------------------------------------------------------------

    async def attempt(
        self, event: dict[str, Any], body: bytes, attempt: int, *, scheduled: bool = False
    ) -> asyncio.Future[None]:
        """Deliver once; then decide: done, retry later, or dead-letter. The future returned
        is done once the attempt is in the attempt log: a first attempt that succeeded does
        not wait for that (its outbox entry is acknowledged only then); every other outcome
        is acted on only once it is recorded.

        `scheduled`: the delivery came off the retry schedule (a retry or a replay), whose
        entry must be cleared once it is done.
        """
        started = time.perf_counter()
        try:
            result = await self.sink.deliver(event, body)
        except Exception as exc:  # a sink bug must not stop the lane
            result = DeliveryResult(
                ok=False,
                reason=f"sink error: {type(exc).__name__}",
                duration_ms=(time.perf_counter() - started) * 1000,
            )
            log.exception("sink_failed", subscription=self.name, event_id=event["id"])
        recorded = self.attempts.add(event["id"], attempt, result)
        if self.on_attempt is not None:
            self.on_attempt(self.name, result)
        if result.ok:
            self.counts["delivered"] += 1
            if scheduled:
                await asyncio.shield(recorded)
                released = await self.deliveries.settle(self.name, event["id"], event)
            else:
                released = self.order is not None and await self.order.release(event)
            if released:
                self._due.set()
            return recorded
        await asyncio.shield(recorded)
        self.counts["failed_attempts"] += 1
        reason = await self._after_failure(event, attempt, result)
        if reason is not None:
            await self._dead_letter(event, attempt, reason)
            log.warning(
                "delivery_dead_lettered",
                subscription=self.name, event_id=event["id"], attempt=attempt, reason=reason,
            )  # fmt: skip
        return recorded

    async def _dead_letter(self, event: dict[str, Any], attempts: int, reason: str) -> None:
        if await self.deliveries.dead_letter(self.name, event, attempts, reason):
            self._due.set()  # the next event of its job (ordering) is due now
        self.counts["dead_lettered"] += 1

    async def _after_failure(
        self, event: dict[str, Any], attempt: int, result: DeliveryResult
    ) -> str | None:
        """Retry later (None), or the reason to dead-letter now."""
        reason = result.reason or "delivery failed"
        if result.disable:
            await self._disable(reason)
            return reason
        if not result.retryable:
            return reason
        health = await self.deliveries.health(self.name)
        if health.failing_since and time.time() - health.failing_since > self.sub.disable_after:
            ago = format_duration(time.time() - health.failing_since, human=True)
            reason = f"failing since {ago} ago: {reason}"
            await self._disable(reason)
            return reason
        delay = retry_delay(self.sub.retry_schedule, attempt, result.retry_after)
        if delay is None:
            return f"gave up after {attempt} attempts: {reason}"
        await self.deliveries.schedule_retry(self.name, event, attempt, time.time() + delay)
        self.counts["retries_scheduled"] += 1
        log.info(
            "delivery_failed",
            subscription=self.name, event_id=event["id"], attempt=attempt, reason=reason,
            retry_in=round(delay, 2),
        )  # fmt: skip
        return None

    async def _disable(self, reason: str) -> None:
        await self.deliveries.disable(self.name, reason)
        self._health = self._health_read = None
        log.error("subscription_disabled", subscription=self.name, reason=reason)

    async def _cached_health(self) -> Health:
        """The subscription's health, read at most once per HEALTH_CACHE_SECONDS: the
        deliveries that start meanwhile share one read."""
        if self._health is not None and time.monotonic() - self._health[0] <= HEALTH_CACHE_SECONDS:
            return self._health[1]
        if self._health_read is None or self._health_read.done():
            self._health_read = asyncio.ensure_future(self.deliveries.health(self.name))
        read = self._health_read
        health = await asyncio.shield(read)
        if read is self._health_read:  # (not one from before a change of health)
            self._health = (time.monotonic(), health)
        return health
