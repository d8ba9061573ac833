"""What the bridge has been doing: recent outbox events with their deliveries, and backlogs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from bridge.config import SubscriptionBase
from bridge.deliveries import Deliveries
from bridge.keys import attempts_key
from bridge.outbox import backlog
from bridge.store import Store, event_from_outbox


def _entry_ms(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def recent_events(
    redis: aioredis.Redis,
    stores: Sequence[Store],
    subscriptions: Sequence[SubscriptionBase],
    count: int,
) -> list[dict[str, Any]]:
    """The newest `count` events of the outboxes of `stores`, newest first, each with its
    delivery attempts summed up per subscription that it is routed to."""
    entries: list[tuple[tuple[int, int], str, dict[str, Any]]] = []
    for store in stores:
        for entry_id, fields in await redis.xrevrange(store.events_key, count=count):
            try:
                event = event_from_outbox(fields)
            except (KeyError, ValueError):
                continue  # the dispatcher logs unreadable entries; the console skips them
            entries.append((_entry_ms(entry_id), store.name, event))
    entries.sort(key=lambda entry: entry[0], reverse=True)
    events = [event for _, _, event in entries[:count]]
    routes = [
        [sub.name for sub in subscriptions if sub.enabled and sub.filter.matches_event(event)]
        for event in events
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for event, names in zip(events, routes, strict=True):
            for name in names:
                pipe.lrange(attempts_key(name, event["id"]), 0, -1)
        found = iter(await pipe.execute())
    return [
        _summary(event, {name: [json.loads(raw) for raw in next(found)] for name in names})
        for event, names in zip(events, routes, strict=True)
    ]


def _summary(event: dict[str, Any], attempts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    data = event["data"]
    deliveries = {}
    for name, found in attempts.items():
        latest = found[0] if found else None  # the event's attempt list is newest first
        delivered = any(a.get("ok") for a in found)
        deliveries[name] = {
            "state": "delivered" if delivered else ("failing" if found else "waiting"),
            "attempts": len(found),
            "last_status": (latest.get("status") or None) if latest else None,
            "last_at": latest.get("at") if latest else None,
            "last_reason": (latest.get("reason") or None) if latest else None,
        }
    return {
        "id": event["id"],
        "store": data["store"],
        "source": data["source"],
        "job_id": data["job"]["id"],
        "job_type": data["job"]["type"],
        "status": data["status"],
        "previous_status": data["previous_status"],
        "time": event["time"],
        "deliveries": deliveries,
        "event": event,
    }


async def backlogs(
    redis: aioredis.Redis, subscriptions: Sequence[SubscriptionBase], outbox_keys: Sequence[str]
) -> dict[str, int]:
    """Events each subscription still owes: outbox entries its own consumer group has not
    finished (unread or in delivery; bridge.outbox.backlog), plus its deliveries waiting for
    a retry. A subscription off in the config owes nothing here."""
    deliveries = Deliveries(redis)
    result = {}
    for sub in subscriptions:
        if not sub.enabled:
            result[sub.name] = 0
            continue
        owed = await backlog(redis, outbox_keys, sub.name)
        result[sub.name] = owed["events"] + await deliveries.retry_count(sub.name)
    return result
