"""Shared fixtures: a real Redis for every test (the machine's, else an embedded one)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster import ClusterUnavailable, LocalCluster, local_cluster
from redis.crc import key_slot

from bridge.app import open_redis
from bridge.embedded import EmbeddedRedis, answers
from bridge.keys import store_key

IN_CI = bool(os.environ.get("CI"))
# A database of its own, so that a developer's data in db 0 is left alone.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL, else the local Redis on 6379; on a machine without one, an embedded Redis.

    In CI a missing Redis is a failure, never a quiet fallback.
    """
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if answers(url):
        yield url
        return
    if IN_CI:
        pytest.fail(f"CI is set and Redis at {url} is not reachable")
    with tempfile.TemporaryDirectory(prefix="jb-test-") as data_dir:
        server = EmbeddedRedis(data_dir, persist=False)
        yield server.start()
        server.stop()


@contextlib.asynccontextmanager
async def clean_redis(url: str, *, cluster: bool = False) -> AsyncIterator[Any]:
    """A clean database, as in arq: connect, flush (every master of a cluster), yield, close.
    The product's own client: same pool, same decoding."""
    client = open_redis(url, cluster=cluster)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A clean database for each test."""
    async with clean_redis(redis_url) as client:
        yield client


def require_service(name: str, reachable: bool) -> None:
    """Brokers other than Redis: skipped on a laptop without them, a failure in CI."""
    if reachable:
        return
    if IN_CI:
        pytest.fail(f"CI is set and {name} is not reachable")
    pytest.skip(f"{name} is not running here")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real six-node Redis Cluster (three masters, three replicas) for this test session.

    Needs redis-server and redis-cli on PATH: a skip on a laptop without them, a failure in CI.
    """
    try:
        with local_cluster() as cluster:
            yield cluster
    except ClusterUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI is set and no Redis Cluster could be started: {exc}")
        pytest.skip(str(exc))


@dataclass
class RedisTarget:
    """A clean Redis for a test: the single one, or the Redis Cluster."""

    client: Any  # redis.asyncio.Redis, or redis.asyncio.cluster.RedisCluster
    url: str
    cluster: LocalCluster | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The `redis` section of a config file that reaches it."""
        return {"url": self.url, "cluster": True} if self.cluster else {"url": self.url}

    def assert_apart(self, stores: Sequence[str]) -> None:
        """On the cluster: the outboxes of `stores` are in different slots, on different
        masters (so delivery meets every multi-key command across slots and nodes)."""
        if self.cluster is None:
            return
        keys = [store_key(store, "events") for store in stores]
        assert len({key_slot(key.encode()) for key in keys}) == len(keys)
        assert len({self.cluster.master_of(key) for key in keys}) == len(keys)


# Runs a test on a single Redis and again on the cluster: `@ON_BOTH` above a test that takes
# the `any_redis` fixture (directly or through one of its own).
ON_BOTH = pytest.mark.parametrize("any_redis", ["single", "cluster"], indirect=True)


@pytest.fixture
async def any_redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[RedisTarget]:
    """A clean single Redis (redis_client's), or, for the `cluster` run of an ON_BOTH test,
    the session's Redis Cluster with every master flushed."""
    if getattr(request, "param", "single") == "single":
        async with clean_redis(redis_url) as client:
            yield RedisTarget(client, redis_url)
        return
    cluster: LocalCluster = request.getfixturevalue("redis_cluster")
    async with clean_redis(cluster.url, cluster=True) as client:
        yield RedisTarget(client, cluster.url, cluster)
