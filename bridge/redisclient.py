"""The bridge's Redis client, one server or a Redis Cluster, and the errors that pass."""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

REDIS_CONNECTIONS = 50
# Per node of a cluster. Its client does not wait for a free connection as the single one
# does (it raises MaxConnectionsError, a ConnectionError the loops retry; redis-py's async
# cluster client has no blocking pool): room for every delivery in flight, and for the
# outbox watch's blocking read of each slot on the node that holds an outbox (bridge.outbox).
CLUSTER_CONNECTIONS = 250

# Trouble that a retry outlives: a node down or failing over (ConnectionError, TimeoutError,
# ClusterDownError, TryAgainError, bursts of MovedError are RedisErrors; a cluster client that
# reaches no node raises RedisClusterException, which is not one), and the network beneath.
TRANSIENT = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)

RedisClient: TypeAlias = aioredis.Redis | RedisCluster


def open_redis(url: str, *, cluster: bool = False) -> RedisClient:
    """A client for the bridge's Redis; with `cluster`, `url` names one node of a Redis
    Cluster and the client discovers the others (and follows failovers).

    The single server's pool blocks when all connections are busy: under a backlog, hundreds
    of deliveries wait for a connection instead of failing with "too many connections".
    """
    if cluster:
        return RedisCluster.from_url(
            url, decode_responses=True, max_connections=CLUSTER_CONNECTIONS
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_CONNECTIONS, timeout=None, decode_responses=True
    )
    return aioredis.Redis.from_pool(pool)
