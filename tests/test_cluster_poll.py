"""The poll side on a real Redis Cluster: the same events as on one Redis, and a failover of the
master that holds the store's slot, followed without losing a transition made after it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cluster import LocalCluster
from helpers import eventually
from redis.asyncio.cluster import RedisCluster

from bridge.app import connect_redis
from bridge.config import ConfigError, parse_config
from bridge.elasticpath import ElasticPathClient
from bridge.leases import Leases
from bridge.poller import Poller, PollSettings
from bridge.redisclient import TRANSIENT, open_redis
from bridge.simulator import Simulator, make_app
from bridge.store import Store

FAST = PollSettings(poll_interval=0.1, idle_poll_interval=0.2)


@contextlib.asynccontextmanager
async def polling(redis: Any, api_base: str, store: str) -> AsyncIterator[Store]:
    """One store's pcm poller under its lease, as `jobs-bridge run` runs it."""
    client = ElasticPathClient(api_base, "sim-client", "sim-secret", max_requests_per_second=100)
    poller = Poller(client, Store(redis, store), "pcm", FAST)
    leases = Leases(redis, f"test-{store}", ttl=3.0)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(leases.polling(poller)(stop)),
        asyncio.create_task(leases.run(stop)),
    ]
    try:
        yield poller.store
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await leases.close()
        await client.close()


async def outbox(store: Store) -> list[dict[str, str]]:
    """The outbox, or [] while Redis fails over."""
    try:
        return [fields for _id, fields in await store.redis.xrange(store.events_key)]
    except TRANSIENT:
        return []


def job_id(entry: dict[str, str]) -> str:
    return json.loads(entry["job"])["id"]


async def seen(store: Store, wanted: set[tuple[str, str]]) -> bool:
    return wanted <= {(job_id(e), e["status"]) for e in await outbox(store)}


def summary(entries: list[dict[str, str]], ids: dict[str, int]) -> list[tuple[Any, ...]]:
    """Each event as (job number, status, previous, sequence, event id), in outbox order."""
    return [(ids[job_id(e)], e["status"], e["prev"], e["seq"], e["id"]) for e in entries]


async def scenario(redis: Any, api_base: str, sim: Simulator) -> list[tuple[Any, ...]]:
    """History, then jobs created, started, failed with errors, finished: step by step."""
    sim.bulk_create(30)
    async with polling(redis, api_base, "same-events") as store:
        await eventually(lambda: store.get_meta("baseline:pcm"), 10, "the baseline")
        jobs = [sim.create_job() for _ in range(5)]
        await eventually(lambda: seen(store, {(j, "pending") for j in jobs}), 10, "pending")
        for job in jobs[:3]:
            sim.set_status(job, "started")
        sim.add_errors(jobs[3], ["row 14: price amount must be a non-negative integer."])
        sim.set_status(jobs[3], "failed")
        await eventually(
            lambda: seen(store, {(j, "started") for j in jobs[:3]} | {(jobs[3], "failed")}), 10
        )
        for job in jobs[:3]:
            sim.set_status(job, "success")
        sim.set_status(jobs[4], "cancelled")
        await eventually(lambda: seen(store, {(j, "success") for j in jobs[:3]}), 10)
        await eventually(lambda: seen(store, {(jobs[4], "cancelled")}), 10)
        return summary(await outbox(store), {job: n for n, job in enumerate(jobs)})


async def test_a_poller_on_the_cluster_emits_what_it_emits_on_one_redis(
    aiohttp_server, redis_client, redis_cluster: LocalCluster
):
    results = []
    cluster = open_redis(redis_cluster.url, cluster=True)
    try:
        await cluster.flushdb()  # every master
        for redis in (redis_client, cluster):
            sim = Simulator(seed=7)  # the same job ids in both runs
            api_base = str((await aiohttp_server(make_app(sim))).make_url("")).rstrip("/")
            results.append(await scenario(redis, api_base, sim))
    finally:
        await cluster.aclose()
    single, on_cluster = results
    assert len(single) == 13  # 5 pending, 3 started, 1 failed, 3 success, 1 cancelled
    assert sorted(on_cluster) == sorted(single)
    # The failed job's event carries its errors on the cluster too.
    entries = await outbox(Store(redis_client, "same-events"))
    assert any("price amount" in e["extra"] for e in entries if e["status"] == "failed")


def test_cluster_without_a_url_is_a_config_error() -> None:
    store = "{name: s, api_base: 'http://127.0.0.1:1', client_id: i, client_secret: s}"
    with pytest.raises(ConfigError) as caught:
        parse_config(f"redis: {{cluster: true}}\nstores: [{store}]", environ={})
    assert caught.value.problems == [
        "redis.cluster: needs redis.url (a node of the cluster): the embedded Redis is one server"
    ]


async def test_the_bridge_connects_to_a_cluster_through_one_node(redis_cluster: LocalCluster):
    store = "{name: s, api_base: 'http://127.0.0.1:1', client_id: i, client_secret: s}"
    text = f"redis: {{url: '{redis_cluster.url}', cluster: true}}\nstores: [{store}]"
    async with connect_redis(parse_config(text, environ={})) as redis:
        assert isinstance(redis, RedisCluster)
        assert len(redis.get_primaries()) == 3  # found from the one node named


async def test_the_poller_follows_a_failover_of_its_stores_master(
    aiohttp_server, redis_cluster: LocalCluster
):
    sim = Simulator()
    api_base = str((await aiohttp_server(make_app(sim))).make_url("")).rstrip("/")
    redis = open_redis(redis_cluster.url, cluster=True)
    try:
        await redis.flushdb()
        async with polling(redis, api_base, "failover") as store:
            await eventually(lambda: store.get_meta("baseline:pcm"), 10, "the baseline")
            first = sim.create_job()
            await eventually(lambda: seen(store, {(first, "pending")}), 10, "the first event")
            master = redis_cluster.master_of(store.events_key)
            redis_cluster.wait_replicated(master)
            redis_cluster.kill(master)
            # Changes while the slot has no master, then after the replica took over.
            sim.set_status(first, "started")
            second = sim.create_job()

            def failed_over() -> bool:
                with contextlib.suppress(LookupError):  # no master at all for a moment
                    return redis_cluster.master_of(store.events_key) != master
                return False

            await eventually(failed_over, 30, "the failover")
            redis_cluster.start_node(master)  # after the failover: it rejoins as a replica
            await eventually(
                lambda: seen(store, {(first, "started"), (second, "pending")}), 30, "caught up"
            )
            sim.set_status(first, "success")
            sim.set_status(second, "started")
            await eventually(
                lambda: seen(store, {(first, "success"), (second, "started")}), 20, "afterwards"
            )
            entries = await outbox(store)
    finally:
        await redis.aclose()
    events = Counter((job_id(e), e["status"]) for e in entries)
    assert events == {
        (first, "pending"): 1,
        (first, "started"): 1,
        (first, "success"): 1,
        (second, "pending"): 1,
        (second, "started"): 1,
    }
    sequences = [int(e["seq"]) for e in entries if job_id(e) == first]
    assert sequences == [1, 2, 3]
