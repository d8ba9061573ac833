"""Redis state of delivery: retry schedule, dead letters, attempt log, subscription health.

Each subscription's delivery state has its own keys under one hash tag (bridge.keys): its
retry schedule, the events being retried, its dead letters, attempt log and health hash. A
script or transaction here touches one subscription's keys only, so one cluster slot.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from bridge.jobs import now_iso
from bridge.keys import (
    LANES,
    LEGACY_DEAD_LETTERS,
    LEGACY_RETRY,
    attempts_key,
    dead_letters_key,
    delivery_key,
    health_key,
    legacy_delivery_key,
    parked_key,
    retry_key,
)
from bridge.ordering import FINISH, finish_call

RETRY_AFTER_MAX = 3600.0  # a destination may slow us down, but not park an event for days


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


if TYPE_CHECKING:
    from bridge.config import BridgeConfig

DAY = 86_400.0
ATTEMPTS_PER_EVENT = 50
LEASE = 300.0  # seconds a claimed retry is hidden; reappears if its dispatcher died

# Claims due retries: each is pushed out by the lease, so a dispatcher that dies mid-attempt
# leaves it to be picked up again instead of losing it.
CLAIM_DUE = """
local retry_key = KEYS[1]
local now = ARGV[1]
local lease_until = ARGV[2]
local limit = ARGV[3]
local due = redis.call('ZRANGEBYSCORE', retry_key, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  redis.call('ZADD', retry_key, lease_until, member)
end
return due
"""


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much delivery history is kept (config: dead_letter_retention, attempt_retention,
    attempt_log_max)."""

    dead_letters: float = 30 * DAY  # seconds a dead letter stays listed and replayable
    attempts: float = 7 * DAY  # seconds an event's attempt list is kept after its last attempt
    attempt_log: int = 10_000  # attempts kept per subscription (approximately)

    @classmethod
    def from_config(cls, config: BridgeConfig) -> Bounds:
        return cls(config.dead_letter_retention, config.attempt_retention, config.attempt_log_max)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(frozen=True, slots=True)
class PendingRetry:
    subscription: str
    event_id: str
    attempts: int
    event: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    subscription: str
    event_id: str
    reason: str
    attempts: int
    failed_at: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Health:
    subscription: str
    enabled: bool
    disabled_reason: str
    disabled_at: float | None
    failing_since: float | None
    last_success_at: float | None
    last_failure_at: float | None
    last_error: str


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _dead_letter(subscription: str, entry_id: str, fields: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        entry_id=entry_id,
        subscription=subscription,
        event_id=fields["event_id"],
        reason=fields["reason"],
        attempts=int(fields["attempts"]),
        failed_at=fields["failed_at"],
        event=json.loads(fields["event"]),
    )


class Deliveries:
    """Delivery bookkeeping shared by every dispatcher, in Redis so it survives restarts."""

    def __init__(self, redis: aioredis.Redis, bounds: Bounds | None = None) -> None:
        self.redis = redis
        self.bounds = bounds or Bounds()
        self._claim = redis.register_script(CLAIM_DUE)
        self._finish = redis.register_script(FINISH)

    async def register(self, subscription: str) -> None:
        """Note that `subscription` has delivery state, for readers that list every one."""
        await self.redis.sadd(LANES, subscription)

    async def known(self) -> list[str]:
        """Every subscription that ever had delivery state here (removed ones included)."""
        return sorted(await self.redis.smembers(LANES))

    # -- retries -------------------------------------------------------------------------

    async def schedule_retry(
        self, subscription: str, event: dict[str, Any], attempts: int, due: float
    ) -> None:
        """Keep the event and retry it at `due` (epoch seconds)."""
        await self.enqueue(subscription, [event], attempts=attempts, due=due)

    async def enqueue(
        self,
        subscription: str,
        events: Iterable[dict[str, Any]],
        *,
        attempts: int = 0,
        due: float | None = None,
        dead_letter_ids: Iterable[str] = (),
    ) -> int:
        """Put events on the retry schedule (due now by default), in one round trip.

        `dead_letter_ids`: the dead letters these events come from, removed in the same step.
        """
        when = _ms(time.time() if due is None else due)
        count = 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.hset(
                    delivery_key(subscription, event["id"]),
                    mapping={"event": json.dumps(event), "attempts": attempts},
                )
                pipe.zadd(retry_key(subscription), {event["id"]: when})
                count += 1
            ids = list(dead_letter_ids)
            if ids:
                pipe.xdel(dead_letters_key(subscription), *ids)
            await pipe.execute()
        return count

    async def claim_due(self, subscription: str, limit: int = 100) -> list[PendingRetry]:
        now = time.time()
        ids = await self._claim(
            keys=[retry_key(subscription)], args=[_ms(now), _ms(now + LEASE), limit]
        )
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hgetall(delivery_key(subscription, event_id))
            records = await pipe.execute()
        return [
            PendingRetry(
                subscription,
                event_id,
                int(record.get("attempts", 0)),
                json.loads(record["event"]) if record.get("event") else None,
            )
            for event_id, record in zip(ids, records, strict=True)
        ]

    async def settle(
        self, subscription: str, event_id: str, event: dict[str, Any] | None = None
    ) -> bool:
        """The delivery is finished (sent or dead-lettered): forget its retry state. With
        the event: the next of its job waiting behind it (bridge.ordering) is due now (True).
        """
        if event is not None:
            keys, args = finish_call(subscription, event)
            return bool(await self._finish(keys=keys, args=args))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(retry_key(subscription), event_id)
            pipe.delete(delivery_key(subscription, event_id))
            await pipe.execute()
        return False

    async def retry_count(self, subscription: str | None = None) -> int:
        """Deliveries waiting for a retry: of one subscription, or of every known one."""
        names = [subscription] if subscription is not None else await self.known()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(retry_key(name))
            counts = await pipe.execute()
        return sum(int(c) for c in counts)

    # -- dead letters --------------------------------------------------------------------

    async def dead_letter(
        self, subscription: str, event: dict[str, Any], attempts: int, reason: str
    ) -> bool:
        """Keep an event that will not be delivered, with why, for `bounds.dead_letters`.
        The next of its job waiting behind it (bridge.ordering) is due now (True)."""
        await self.register(subscription)  # (another slot: not in the script below)
        fields = {
            "subscription": subscription,
            "event_id": event["id"],
            "reason": reason,
            "attempts": attempts,
            "failed_at": now_iso(),
            "event": json.dumps(event),
        }
        oldest = f"{_ms(time.time() - self.bounds.dead_letters)}-0"
        keys, args = finish_call(
            subscription, event, [oldest, *(x for pair in fields.items() for x in pair)]
        )
        return bool(await self._finish(keys=keys, args=args))

    async def dead_letters(
        self, subscription: str | None = None, entry_id: str | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first: of one subscription, or of every one (merged)."""
        names = [subscription] if subscription is not None else await self.known()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                if entry_id is not None:
                    pipe.xrange(dead_letters_key(name), entry_id, entry_id)
                else:
                    pipe.xrange(dead_letters_key(name))
            found = await pipe.execute()
        letters = [
            _dead_letter(name, eid, f)
            for name, entries in zip(names, found, strict=True)
            for eid, f in entries
        ]
        return sorted(letters, key=lambda d: (_entry_order(d.entry_id), d.subscription))

    async def dead_letter_count(self, subscription: str | None = None) -> int:
        """Dead letters of one subscription, or of every one: counted, not read."""
        names = [subscription] if subscription is not None else await self.known()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xlen(dead_letters_key(name))
            counts = await pipe.execute()
        return sum(int(c) for c in counts)

    async def expire_dead_letters(self, subscription: str) -> None:
        """Drop dead letters older than their retention (also with none added lately)."""
        oldest = _ms(time.time() - self.bounds.dead_letters)
        await self.redis.xtrim(dead_letters_key(subscription), minid=oldest, approximate=False)

    async def latest_dead_letters(
        self, count: int, subscription: str | None = None
    ) -> list[DeadLetter]:
        """The newest `count` dead letters (of one subscription), oldest first."""
        names = [subscription] if subscription is not None else await self.known()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xrevrange(dead_letters_key(name), count=count)
            found = await pipe.execute()
        letters = [
            _dead_letter(name, eid, f)
            for name, entries in zip(names, found, strict=True)
            for eid, f in entries
        ]
        letters.sort(key=lambda d: (_entry_order(d.entry_id), d.subscription))
        return letters[-count:]

    async def requeue(self, letters: list[DeadLetter]) -> int:
        """Move dead letters back onto the retry schedule, due now, attempt count reset."""
        by_subscription: dict[str, list[DeadLetter]] = {}
        for letter in letters:
            by_subscription.setdefault(letter.subscription, []).append(letter)
        for subscription, group in by_subscription.items():
            await self.enqueue(
                subscription,
                [letter.event for letter in group],
                dead_letter_ids=[letter.entry_id for letter in group],
            )
        return len(letters)

    async def migrate_legacy(self) -> int:
        """Move the shared retry schedule and dead letters of before lanes (bridge.keys,
        LEGACY_*) to each subscription's own keys; how many were moved."""
        moved = 0
        for _entry_id, fields in await self.redis.xrange(LEGACY_DEAD_LETTERS):
            await self.register(fields["subscription"])
            await self.redis.xadd(dead_letters_key(fields["subscription"]), fields)
            moved += 1
        await self.redis.delete(LEGACY_DEAD_LETTERS)
        for member, due in await self.redis.zrange(LEGACY_RETRY, 0, -1, withscores=True):
            subscription, _, event_id = member.partition("\n")
            old = legacy_delivery_key(subscription, event_id)
            record = await self.redis.hgetall(old)
            await self.register(subscription)
            if record:
                await self.redis.hset(delivery_key(subscription, event_id), mapping=record)
            await self.redis.zadd(retry_key(subscription), {event_id: due})
            await self.redis.delete(old)
            moved += 1
        await self.redis.delete(LEGACY_RETRY)
        return moved

    # -- attempt log ---------------------------------------------------------------------

    async def attempts_for_event(
        self, event_id: str, subscriptions: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Every attempt of one event, to any of `subscriptions`, oldest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for subscription in subscriptions:
                pipe.lrange(attempts_key(subscription, event_id), 0, -1)
            lists = await pipe.execute()
        attempts = [json.loads(raw) for found in lists for raw in found]
        return sorted(attempts, key=lambda a: (a["at"], a["attempt"]))

    async def attempts_for_subscription(
        self, subscription: str, count: int = 100
    ) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(attempts_key(subscription), count=count)
        return [json.loads(fields["record"]) for _id, fields in reversed(entries)]

    # -- health --------------------------------------------------------------------------

    async def health(self, subscription: str) -> Health:
        raw = await self.redis.hgetall(health_key(subscription))

        def number(field: str) -> float | None:
            return float(raw[field]) if raw.get(field) else None

        return Health(
            subscription=subscription,
            enabled=raw.get("disabled") != "1",
            disabled_reason=raw.get("disabled_reason", ""),
            disabled_at=number("disabled_at"),
            failing_since=number("failing_since"),
            last_success_at=number("last_success_at"),
            last_failure_at=number("last_failure_at"),
            last_error=raw.get("last_error", ""),
        )

    async def status(self, subscription: str) -> dict[str, Any]:
        """Health, retries, parked events (ordering) and dead letters of one subscription,
        for people to read."""
        health = await self.health(subscription)
        return {
            "enabled": health.enabled,
            "disabled_reason": health.disabled_reason or None,
            "last_success_at": health.last_success_at,
            "last_failure_at": health.last_failure_at,
            "last_error": health.last_error or None,
            "failing_since": health.failing_since,
            "retrying": await self.retry_count(subscription),
            "parked": int(await self.redis.hlen(parked_key(subscription))),
            "dead_letters": await self.dead_letter_count(subscription),
        }

    async def disable(self, subscription: str, reason: str) -> None:
        await self.redis.hset(
            health_key(subscription),
            mapping={"disabled": "1", "disabled_reason": reason, "disabled_at": time.time()},
        )

    async def enable(self, subscription: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(health_key(subscription), "disabled", "disabled_reason", "disabled_at")
            pipe.hdel(health_key(subscription), "failing_since")
            await pipe.execute()
