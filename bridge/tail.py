"""Following a bridge at work: each event as it is emitted into an outbox, and, for one
subscription, the outcome of each delivery attempt, read from Redis by any process."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from bridge.config import SubscriptionBase
from bridge.keys import attempts_key, store_key
from bridge.slots import per_slot
from bridge.store import event_from_outbox

BLOCK = 1.0  # seconds one XREAD waits for news


async def _ends(redis: aioredis.Redis, keys: Sequence[str]) -> dict[str, str]:
    """The id of each stream's last entry: reading after it means "from now on". Unlike `$`,
    it misses nothing that arrives between two reads."""
    ends = {}
    for key in keys:
        last = await redis.xrevrange(key, count=1)
        ends[key] = last[0][0] if last else "0-0"
    return ends


async def follow(
    redis: aioredis.Redis,
    stores: Sequence[str],
    on_event: Callable[[dict[str, Any]], None],
    *,
    subscription: SubscriptionBase | None = None,
    on_attempt: Callable[[dict[str, Any]], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Call `on_event` with each new event of `stores` (those `subscription` receives, when
    given) and `on_attempt` with each new attempt record of `subscription`; until cancelled."""
    log_key = attempts_key(subscription.name) if subscription is not None else None
    positions = await _ends(redis, [store_key(name, "events") for name in stores])
    if log_key is not None:
        positions.update(await _ends(redis, [log_key]))
    if on_ready is not None:
        on_ready()
    while True:
        for _keys, replies in await per_slot(redis, positions, _read, blocking=True):
            if isinstance(replies, BaseException):
                raise replies
            for key, entries in replies:
                for entry_id, fields in entries:
                    positions[key] = entry_id
                    if key == log_key:
                        if on_attempt is not None:
                            on_attempt(json.loads(fields["record"]))
                        continue
                    event = event_from_outbox(fields)
                    if subscription is None or subscription.filter.matches_event(event):
                        on_event(event)


async def _read(redis: aioredis.Redis, positions: dict[str, str]) -> list[Any]:
    """New entries after `positions`, waiting up to BLOCK (on a cluster: of one hash slot,
    read beside the others; the round ends with the last of them)."""
    return list(await redis.xread(positions, count=100, block=int(BLOCK * 1000)) or [])


def event_line(event: dict[str, Any]) -> str:
    """One event as `tail` prints it for people."""
    data = event["data"]
    return (
        f"{event['time']}  {data['store']}/{data['source']}  {data['status']:<9}  "
        f"{data['job']['type']}  {event['subject']}  seq {event['sequence']}  {event['id']}"
    )


def attempt_line(record: dict[str, Any]) -> str:
    """One delivery attempt as `tail -s` prints it for people."""
    outcome = "delivered" if record["ok"] else "FAILED"
    status = f" HTTP {record['status']}" if record.get("status") not in ("", None) else ""
    reason = f"  {record['reason']}" if record.get("reason") else ""
    return (
        f"{record['at']}    -> {record['subscription']} attempt {record['attempt']}: "
        f"{outcome}{status} in {record['duration_ms']} ms  {record['event_id']}{reason}"
    )
