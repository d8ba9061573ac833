"""The attempt log written in batches: each attempt in the subscription's and the event's log,
and the health hash as the attempts one by one would leave it."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bridge.attemptlog import AttemptLog
from bridge.deliveries import Bounds, Deliveries
from bridge.keys import attempts_key
from bridge.sinks import DeliveryResult

OK = DeliveryResult(ok=True, status=204, duration_ms=1.5)


def failed(reason: str) -> DeliveryResult:
    return DeliveryResult(ok=False, status=500, reason=reason, response_excerpt="nope")


async def test_a_batch_is_one_write_and_every_attempt_is_logged(
    redis_client: aioredis.Redis,
) -> None:
    log = AttemptLog(redis_client, "hook", Bounds())
    written = [log.add(f"e-{n}", 1, OK) for n in range(5)] + [log.add("e-0", 2, failed("boom"))]
    assert len({id(w) for w in written}) == 1  # one batch
    await asyncio.shield(written[0])
    deliveries = Deliveries(redis_client)
    records = await deliveries.attempts_for_subscription("hook")
    assert [(r["event_id"], r["attempt"], r["ok"]) for r in records] == [
        *((f"e-{n}", 1, 1) for n in range(5)),
        ("e-0", 2, 0),
    ]
    [first, second] = await deliveries.attempts_for_event("e-0", ["hook"])
    assert (first["status"], second["status"], second["reason"]) == (204, 500, "boom")
    assert second["response"] == "nope" and first["at"].endswith("Z")
    health = await deliveries.health("hook")
    assert health.last_error == "boom" and health.failing_since is not None
    assert health.last_success_at is not None and health.last_failure_at is not None


@pytest.mark.parametrize(
    ("outcomes", "failing"),
    [
        ([True], False),
        ([False], True),
        ([False, True], False),  # a success ends the failing spell
        ([True, False], True),  # a failure after it starts one
        ([False, True, False, False], True),
    ],
)
async def test_health_is_what_the_attempts_one_by_one_leave(
    redis_client: aioredis.Redis, outcomes: list[bool], failing: bool
) -> None:
    log = AttemptLog(redis_client, "hook", Bounds())
    batch = [log.add("e", n, OK if ok else failed(f"fail {n}")) for n, ok in enumerate(outcomes)]
    await asyncio.shield(batch[-1])
    health = await Deliveries(redis_client).health("hook")
    assert (health.failing_since is not None) is failing
    assert (health.last_success_at is not None) is any(outcomes)
    last_failure = max((n for n, ok in enumerate(outcomes) if not ok), default=None)
    assert health.last_error == ("" if last_failure is None else f"fail {last_failure}")


async def test_a_failing_spell_keeps_its_start_across_batches(
    redis_client: aioredis.Redis,
) -> None:
    log = AttemptLog(redis_client, "hook", Bounds())
    await asyncio.shield(log.add("e", 1, failed("first")))
    since = (await Deliveries(redis_client).health("hook")).failing_since
    await asyncio.shield(log.add("e", 2, failed("second")))
    health = await Deliveries(redis_client).health("hook")
    assert health.failing_since == since and health.last_error == "second"


async def test_a_write_that_fails_fails_its_batch(redis_client: aioredis.Redis) -> None:
    await redis_client.set(attempts_key("hook"), "not a stream")
    log = AttemptLog(redis_client, "hook", Bounds())
    written = log.add("e", 1, OK)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await asyncio.shield(written)
    await log.close()
    assert await redis_client.llen(attempts_key("hook", "e")) == 0
