"""A Slack outage during a failure storm, through the real dispatcher: digests are deliveries
like any other, so every failed job is alerted once Slack is back. Real Redis, the local fake
Slack."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from fakeslack import WEBHOOK_PATH, FakeSlack
from helpers import eventually
from lanes_harness import JOB_OF, ServerFactory, dispatcher, dispatching, emit

from bridge.deliveries import Deliveries
from bridge.sinks.slack import SlackSink, SlackSubscription

OUTAGE = 25.0  # seconds Slack answers 503


async def test_every_failure_of_a_storm_is_alerted_after_a_slack_outage(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    """Before: an event folded into a digest counted as delivered; the digest was dropped
    after 4 tries (2/4/8 s), so a 15 s outage lost those alerts, dead-lettering nothing."""
    fake = FakeSlack(rate_interval=0.02)
    server = await aiohttp_server(fake.app)
    webhook_url = str(server.make_url(WEBHOOK_PATH))
    sub = SlackSubscription.model_validate(
        {
            "name": "alerts",
            "type": "slack",
            "webhook_url": webhook_url,
            "group_window": "1s",
            "group_threshold": 2,
            "allow_private_networks": True,
            "retry_schedule": ["1s", "2s", "4s", "8s", "8s", "8s", "8s"],
        }
    )
    sink = SlackSink(
        "alerts",
        redis_client,
        webhook_url=webhook_url,
        group_window=1.0,
        group_threshold=2,
        allow_private_networks=True,
        min_interval=0.02,
    )
    sink.digest.backoff = (0.5, 0.5)
    found = dispatcher(redis_client, [sub], sinks={"alerts": sink})
    deliveries = Deliveries(redis_client)
    fake.webhook_error = (503, "service_unavailable")
    async with dispatching(found):
        ids = await emit(redis_client, 12)  # the storm, as Slack goes down
        down_until = time.monotonic() + OUTAGE
        await eventually(lambda: len(fake.rejected) >= 12, 10, "the storm to meet the outage")
        more = await emit(redis_client, 4)  # and more during it
        await eventually(lambda: time.monotonic() > down_until, OUTAGE + 1, "the outage's end")
        assert fake.messages == []
        fake.webhook_error = None
        await eventually(lambda: _alerted(fake, ids + more), 40, "every failure alerted")
        await eventually(lambda: _settled(deliveries), 10, "the retries to settle")
    assert await deliveries.dead_letters("alerts") == []
    stats = await redis_client.hgetall(sink.stats_key)
    assert int(stats.get("digests_failed", 0)) >= 1  # a digest did fail during the outage
    assert int(stats["digests_sent"]) >= 1


def _alerted(fake: FakeSlack, ids: list[str]) -> bool:
    text = "\n".join(m.dump() for m in fake.top_level())
    return all(JOB_OF[eid] in text for eid in ids)


async def _settled(deliveries: Deliveries) -> bool:
    return await deliveries.retry_count("alerts") == 0
