"""Redis state of delivery: retry schedule, dead letters, attempt log, subscription health.

Its keys (bridge.keys): jb:retry, jb:delivery:..., jb:dlq, and per subscription its attempt
log and health hash.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bridge.jobs import now_iso
from bridge.keys import DEAD_LETTERS, RETRY, attempts_key, delivery_key, health_key
from bridge.sinks import DeliveryResult

ATTEMPTS_PER_SUBSCRIPTION = 10_000
ATTEMPTS_PER_EVENT = 50
ATTEMPT_RETENTION = 7 * 86_400  # seconds an event's attempt list is kept
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


# One attempt: the subscription's log, the event's log and the health hash, in one round trip.
RECORD_ATTEMPT = """
local subscription_log = KEYS[1]
local event_log = KEYS[2]
local health = KEYS[3]
local record = ARGV[1]              -- the attempt, as JSON
local ok = ARGV[2] == '1'
local now = ARGV[3]
local reason = ARGV[4]
local subscription_cap = ARGV[5]
local event_cap = tonumber(ARGV[6])
local retention = ARGV[7]
redis.call('XADD', subscription_log, 'MAXLEN', '~', subscription_cap, '*', 'record', record)
redis.call('LPUSH', event_log, record)
redis.call('LTRIM', event_log, 0, event_cap - 1)
redis.call('EXPIRE', event_log, retention)
if ok then
  redis.call('HSET', health, 'last_success_at', now)
  redis.call('HDEL', health, 'failing_since')
else
  redis.call('HSET', health, 'last_failure_at', now, 'last_error', reason)
  redis.call('HSETNX', health, 'failing_since', now)
end
return 1
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _member(subscription: str, event_id: str) -> str:
    """A retry's member in the schedule: its subscription and event id."""
    return f"{subscription}\n{event_id}"


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


def _dead_letter(entry_id: str, fields: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        entry_id=entry_id,
        subscription=fields["subscription"],
        event_id=fields["event_id"],
        reason=fields["reason"],
        attempts=int(fields["attempts"]),
        failed_at=fields["failed_at"],
        event=json.loads(fields["event"]),
    )


class Deliveries:
    """Delivery bookkeeping shared by every dispatcher, in Redis so it survives restarts."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM_DUE)
        self._record = redis.register_script(RECORD_ATTEMPT)

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
                pipe.zadd(RETRY, {_member(subscription, event["id"]): when})
                count += 1
            ids = list(dead_letter_ids)
            if ids:
                pipe.xdel(DEAD_LETTERS, *ids)
            await pipe.execute()
        return count

    async def claim_due(self, limit: int = 100) -> list[PendingRetry]:
        now = time.time()
        members = await self._claim(keys=[RETRY], args=[_ms(now), _ms(now + LEASE), limit])
        if not members:
            return []
        pairs = [member.split("\n", 1) for member in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            for subscription, event_id in pairs:
                pipe.hgetall(delivery_key(subscription, event_id))
            records = await pipe.execute()
        return [
            PendingRetry(
                subscription,
                event_id,
                int(record.get("attempts", 0)),
                json.loads(record["event"]) if record.get("event") else None,
            )
            for (subscription, event_id), record in zip(pairs, records, strict=True)
        ]

    async def settle(self, subscription: str, event_id: str) -> None:
        """The delivery is finished (sent or dead-lettered): forget its retry state."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(RETRY, _member(subscription, event_id))
            pipe.delete(delivery_key(subscription, event_id))
            await pipe.execute()

    async def retry_count(self, subscription: str | None = None) -> int:
        if subscription is None:
            return int(await self.redis.zcard(RETRY))
        members = await self.redis.zrange(RETRY, 0, -1)
        return sum(1 for m in members if m.split("\n", 1)[0] == subscription)

    # -- dead letters --------------------------------------------------------------------

    async def dead_letter(
        self, subscription: str, event: dict[str, Any], attempts: int, reason: str
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                DEAD_LETTERS,
                {
                    "subscription": subscription,
                    "event_id": event["id"],
                    "reason": reason,
                    "attempts": attempts,
                    "failed_at": now_iso(),
                    "event": json.dumps(event),
                },
            )
            pipe.zrem(RETRY, _member(subscription, event["id"]))
            pipe.delete(delivery_key(subscription, event["id"]))
            await pipe.execute()

    async def dead_letters(
        self, subscription: str | None = None, entry_id: str | None = None
    ) -> list[DeadLetter]:
        if entry_id is not None:
            entries = await self.redis.xrange(DEAD_LETTERS, entry_id, entry_id)
        else:
            entries = await self.redis.xrange(DEAD_LETTERS)
        letters = [_dead_letter(eid, f) for eid, f in entries]
        if subscription is not None:
            letters = [d for d in letters if d.subscription == subscription]
        return letters

    async def latest_dead_letters(
        self, count: int, subscription: str | None = None
    ) -> list[DeadLetter]:
        """The newest `count` dead letters (of one subscription), oldest first."""
        found: list[DeadLetter] = []
        cursor = "+"
        while len(found) < count:
            entries = await self.redis.xrevrange(DEAD_LETTERS, max=cursor, count=max(count, 100))
            if not entries:
                break
            letters = (_dead_letter(eid, f) for eid, f in entries)
            found += [d for d in letters if subscription in (None, d.subscription)]
            cursor = "(" + entries[-1][0]
        return found[:count][::-1]

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

    # -- attempt log ---------------------------------------------------------------------

    async def record_attempt(
        self, subscription: str, event_id: str, attempt: int, result: DeliveryResult
    ) -> None:
        record = {
            "subscription": subscription,
            "event_id": event_id,
            "attempt": attempt,
            "at": now_iso(),
            "ok": int(result.ok),
            "status": result.status if result.status is not None else "",
            "duration_ms": round(result.duration_ms, 1),
            "reason": result.reason,
            "response": result.response_excerpt[:1024],
        }
        await self._record(
            keys=[
                attempts_key(subscription),
                attempts_key(subscription, event_id),
                health_key(subscription),
            ],
            args=[
                json.dumps(record),
                int(result.ok),
                time.time(),
                result.reason,
                ATTEMPTS_PER_SUBSCRIPTION,
                ATTEMPTS_PER_EVENT,
                ATTEMPT_RETENTION,
            ],
        )

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
        """Health, retries and dead letters of one subscription, for people to read."""
        health = await self.health(subscription)
        return {
            "enabled": health.enabled,
            "disabled_reason": health.disabled_reason or None,
            "last_success_at": health.last_success_at,
            "last_failure_at": health.last_failure_at,
            "last_error": health.last_error or None,
            "failing_since": health.failing_since,
            "retrying": await self.retry_count(subscription),
            "dead_letters": len(await self.dead_letters(subscription)),
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
