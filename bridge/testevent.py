"""Test events: one synthetic job event sent through a subscription's own sink, on request.

`POST /subscriptions/{name}/test` and `jobs-bridge send-test` check an endpoint without
waiting for a real job. The event goes through the sink a real event would take (signed like
any webhook) and its attempt is written to the subscription's attempt log, but it is never
retried or dead-lettered, and it leaves the subscription's health alone: a test of an
endpoint that is not ready yet must not count towards disabling it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog

from bridge.config import BridgeConfig, SubscriptionBase
from bridge.deliveries import ATTEMPTS_PER_EVENT, Bounds
from bridge.events import build_event, encode
from bridge.jobs import now_iso
from bridge.keys import LANES, attempts_key
from bridge.sinks.base import DeliveryResult, SinkContext, capped, describe_error, elapsed_ms
from bridge.sinks.registry import MissingExtra, build_sink

log = structlog.get_logger(__name__)

TEST_EVENT_TYPE = "com.elasticpath.bridge.test"
TEST_JOB_TYPE = "bridge-test"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the API answers and the command line prints."""

    ok: bool
    status: int | None
    duration_ms: float
    error: str | None


def synthetic_event(store: str) -> dict[str, Any]:
    """A CloudEvent shaped like a job's success, with a synthetic job and its own type."""
    job_id = str(uuid.uuid4())
    now = now_iso()
    job = {
        "id": job_id,
        "type": TEST_JOB_TYPE,
        "status": "success",
        "created_at": now,
        "started_at": now,
        "completed_at": now,
        "updated_at": now,
        "meta": {"test": True},
    }
    event = build_event(
        id=str(uuid.uuid4()),
        store=store,
        source="pcm",
        status="success",
        previous_status="started",
        sequence=1,
        time=now,
        job=job,
    )
    return {**event, "type": TEST_EVENT_TYPE}


async def send_test(redis: aioredis.Redis, config: BridgeConfig, sub: SubscriptionBase) -> Outcome:
    """Send one test event to `sub` through a sink of its own, and log the attempt.

    The event names the first store the subscription's filter allows, so that a queue
    routes it as it would route a real one."""
    event = synthetic_event((sub.filter.stores or [store.name for store in config.stores])[0])
    allow_private = config.subscription_allows_private(sub)
    started = time.perf_counter()
    try:
        sink = build_sink(sub, SinkContext(redis, allow_private))
    except MissingExtra as exc:
        return Outcome(False, None, elapsed_ms(started), str(exc))
    try:
        result = await sink.deliver(event, encode(event))
    except Exception as exc:  # a sink bug: said, not raised to the caller
        log.exception("sink_failed", subscription=sub.name, event_id=event["id"])
        result = DeliveryResult(ok=False, reason=capped(f"sink error: {describe_error(exc)}"))
    finally:
        await sink.close()
    result_ms = result.duration_ms or elapsed_ms(started)
    await _record(redis, Bounds.from_config(config), sub.name, event["id"], result)
    log.info("test_event_sent", subscription=sub.name, ok=result.ok, status=result.status)
    return Outcome(result.ok, result.status, result_ms, None if result.ok else result.reason)


async def _record(
    redis: aioredis.Redis, bounds: Bounds, subscription: str, event_id: str, result: DeliveryResult
) -> None:
    """The attempt in the subscription's and the event's logs, as Deliveries writes them,
    marked as a test; the health hash is not touched."""
    record = json.dumps(
        {
            "subscription": subscription,
            "event_id": event_id,
            "attempt": 1,
            "at": now_iso(),
            "ok": int(result.ok),
            "status": result.status if result.status is not None else "",
            "duration_ms": round(result.duration_ms, 1),
            "reason": result.reason,
            "response": result.response_excerpt[:1024],
            "test": True,
        }
    )
    async with redis.pipeline(transaction=False) as pipe:
        pipe.sadd(LANES, subscription)  # it has delivery state now (Deliveries.register)
        pipe.xadd(
            attempts_key(subscription),
            {"record": record},
            maxlen=bounds.attempt_log,
            approximate=True,
        )
        pipe.lpush(attempts_key(subscription, event_id), record)
        pipe.ltrim(attempts_key(subscription, event_id), 0, ATTEMPTS_PER_EVENT - 1)
        pipe.expire(attempts_key(subscription, event_id), int(bounds.attempts))
        await pipe.execute()
