"""Shared fixtures: a real Redis for every test (the machine's, else an embedded one)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from cluster import ClusterUnavailable, LocalCluster, local_cluster

from bridge.app import open_redis
from bridge.embedded import EmbeddedRedis, answers

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


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A clean database for each test, as in arq: connect, flush, yield, close."""
    client = open_redis(redis_url)  # the product's own client: same pool, same decoding
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


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
