"""The whole pipeline on a real Redis Cluster: two simulated stores whose outboxes are on two
masters, `jobs-bridge run` as a process of its own, a webhook receiver over real HTTP; the
master holding one store's slot is killed (-9) mid-run, its replica is promoted, and every
transition made from then on reaches the receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cluster import LocalCluster
from conftest import RedisTarget, clean_redis
from helpers import FAST_STORE, OTHER_STORE, WebhookReceiver, eventually, start_receiver, webhook

from bridge.keys import store_key
from bridge.simulator import Simulator, make_app
from bridge.store import Store

STORES = ("shop", OTHER_STORE)  # two slots, on two masters
FAILOVER = 30.0  # seconds: the replica's promotion, then the bridge's backoffs behind it
TRAFFIC_EVERY = 0.1  # seconds between new jobs in each store around the failover
TRAFFIC_AFTER = 1.0  # seconds new jobs keep coming after the promotion


@contextlib.asynccontextmanager
async def bridge_process(config: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`jobs-bridge run -c config`, its output in `log`; stopped with SIGTERM at the end."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "--json-logs", "run", "-c", str(config),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        yield process
        assert process.returncode is None, f"the bridge exited: {_tail(log)}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def config_file(
    path: Path, cluster: LocalCluster, bases: dict[str, str], hook: dict[str, Any]
) -> Path:
    """A config of the stores (name -> the simulator's URL) and `hook`, on the cluster."""
    stores = [{"name": name, "api_base": base, **FAST_STORE} for name, base in bases.items()]
    data = {
        "redis": {"url": cluster.url, "cluster": True},
        "lease_ttl": "3s",  # the least: a lease that lapsed in the failover comes back soon
        "allow_private_networks": True,  # the receiver is on 127.0.0.1
        "data_dir": str(path.parent / "var"),
        "stores": stores,
        "subscriptions": [hook],
    }
    path.write_text(json.dumps(data))
    return path


async def polled_once(redis: Any, store: str) -> bool:
    return await Store(redis, store).get_meta("baseline:pcm") is not None


@contextlib.asynccontextmanager
async def traffic(sims: list[Simulator]) -> AsyncIterator[set[tuple[str, str]]]:
    """A new job in each simulator every TRAFFIC_EVERY seconds while in the block: the
    transitions (job, "pending") made, complete once the block is left."""
    created: set[tuple[str, str]] = set()

    async def create() -> None:
        while True:
            created.update(_created(sims))
            await asyncio.sleep(TRAFFIC_EVERY)

    task = asyncio.create_task(create())
    try:
        yield created
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def promoted(cluster: LocalCluster, key: str, killed: int) -> bool:
    with contextlib.suppress(LookupError):  # no master at all for a moment
        return cluster.master_of(key) != killed
    return False


async def test_delivery_follows_a_failover_of_a_stores_master(
    aiohttp_server: Any, redis_cluster: LocalCluster, tmp_path: Path, record_property: Any
) -> None:
    async with clean_redis(redis_cluster.url, cluster=True) as redis:
        RedisTarget(redis, redis_cluster.url, redis_cluster).assert_apart(STORES)
        shop, other = sims = [Simulator(seed=n) for n in range(len(STORES))]
        bases = {
            name: str((await aiohttp_server(make_app(sim))).make_url("")).rstrip("/")
            for name, sim in zip(STORES, sims, strict=True)
        }
        receiver: WebhookReceiver = await start_receiver(aiohttp_server)
        hook = webhook("hook", receiver.url, receiver.secret, retry_schedule=["200ms", "1s"])
        config = config_file(tmp_path / "bridge.json", redis_cluster, bases, hook)
        async with bridge_process(config, tmp_path / "bridge.log"):
            for name in STORES:
                await eventually(lambda n=name: polled_once(redis, n), 20, f"{name}'s baseline")
            jobs = shop.create_job(), other.create_job()
            wanted = {(job, "pending") for job in jobs}
            await eventually(lambda: wanted <= receiver.received, 10, "the first deliveries")

            # kill -9 the master of the shop's slot (once it has replicated what it took so
            # far) while new jobs keep coming in both stores, until after the promotion.
            key = store_key("shop", "events")
            killed = redis_cluster.master_of(key)
            async with traffic(sims) as created:
                redis_cluster.wait_replicated(killed)
                redis_cluster.kill(killed)
                killed_at = time.monotonic()
                wanted |= _move(sims, jobs, "started")
                await eventually(
                    lambda: promoted(redis_cluster, key, killed), FAILOVER, "a promotion"
                )
                promoted_at = time.monotonic()
                redis_cluster.start_node(killed)  # after the failover: it rejoins as a replica
                await asyncio.sleep(TRAFFIC_AFTER)  # (more traffic, not a wait for something)
            wanted |= created
            # (A job is polled, not pushed: one that moved on again before the bridge saw it
            # would skip a status. So each change waits until the one before was delivered.)
            await eventually(
                lambda: wanted <= receiver.received, FAILOVER, "what changed meanwhile"
            )
            caught_up_at = time.monotonic()
            wanted |= _move(sims, jobs, "success") | _created(sims)
            await eventually(lambda: wanted <= receiver.received, 10, "what changed after")
    record_property("promoted_after_s", round(promoted_at - killed_at, 2))
    record_property("caught_up_after_s", round(caught_up_at - killed_at, 2))
    copies = Counter((e["subject"], e["data"]["status"]) for e in receiver.events)
    record_property("transitions", len(wanted))
    record_property("duplicates", sum(copies.values()) - len(copies))
    assert set(copies) == wanted  # nothing lost, nothing invented
    assert {e["data"]["store"] for e in receiver.events} == set(STORES)
    # A transition sent twice (at least once) has one id: a consumer sees it is the same.
    assert len({e["id"] for e in receiver.events}) == len(copies)


def _move(sims: list[Simulator], jobs: tuple[str, ...], status: str) -> set[tuple[str, str]]:
    """Each job (one per simulator) to `status`: the transitions now wanted."""
    for sim, job in zip(sims, jobs, strict=True):
        sim.set_status(job, status)
    return {(job, status) for job in jobs}


def _created(sims: list[Simulator]) -> set[tuple[str, str]]:
    """A new job in each simulator: the transitions now wanted."""
    return {(sim.create_job(), "pending") for sim in sims}


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]
