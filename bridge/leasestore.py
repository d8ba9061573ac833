"""The Redis side of the poll leases (bridge.leases): their scripts, and who holds what.

A lease is `jb:{<store>}:lease:<source>` = "<token> <process id>" with a TTL, in its store's
slot; the token counts its acquisitions (meta field `lease_token:<source>`). Processes announce
themselves in `jb:processes`, a sorted set by last heartbeat in Redis's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bridge.keys import PROCESSES, lease_key, store_key

# Many leases at once: pipelined on one Redis; on a cluster (whose client refuses scripts in a
# pipeline) this many calls in flight. The leases' own connections on one Redis, so that they
# never wait behind a busy process's pollers for one.
CONCURRENCY = 16
CONNECTIONS = 4

ACQUIRE = """
local lease_key = KEYS[1]
local meta_key = KEYS[2]
local owner = ARGV[1]
local ttl_ms = ARGV[2]
local counter = ARGV[3]             -- meta field counting the acquisitions of this lease
if redis.call('EXISTS', lease_key) == 1 then
  return false
end
local value = redis.call('HINCRBY', meta_key, counter, 1) .. ' ' .. owner
redis.call('SET', lease_key, value, 'PX', ttl_ms)
return value
"""

RENEW = """
local lease_key = KEYS[1]
local value = ARGV[1]
local ttl_ms = ARGV[2]
if redis.call('GET', lease_key) ~= value then
  return 0
end
return redis.call('PEXPIRE', lease_key, ttl_ms)
"""

RELEASE = """
local lease_key = KEYS[1]
local value = ARGV[1]
if redis.call('GET', lease_key) ~= value then
  return 0
end
return redis.call('DEL', lease_key)
"""

# Returns Redis's time (ms) and every live process with its last heartbeat (ms).
HEARTBEAT = """
local processes = KEYS[1]
local me = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local leaving = ARGV[3] == '1'
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if leaving then
  redis.call('ZREM', processes, me)
else
  redis.call('ZADD', processes, now, me)
end
redis.call('ZREMRANGEBYSCORE', processes, '-inf', now - ttl_ms)
redis.call('PEXPIRE', processes, ttl_ms * 2)
return {now, redis.call('ZRANGE', processes, 0, -1, 'WITHSCORES')}
"""

Pair = tuple[str, str]  # (store, source)


def holder(value: str | None) -> tuple[int, str] | None:
    """(token, process id) of a lease's value."""
    if not value:
        return None
    token, _, owner = value.partition(" ")
    return int(token), owner


class LeaseStore:
    """The leases of one process (`owner`) in Redis, each taken for `ttl` seconds."""

    def __init__(self, redis: Any, owner: str, ttl: float) -> None:
        self.redis = _own_connections(redis)
        self._shared = redis
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)
        self._acquire = self.redis.register_script(ACQUIRE)
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self._heartbeat = self.redis.register_script(HEARTBEAT)

    async def close(self) -> None:
        if self.redis is not self._shared:
            await self.redis.aclose()

    async def beat(self, leaving: bool = False) -> tuple[int, dict[str, int]]:
        """Announce this process (or its leaving): Redis's time and every live process with
        its last heartbeat, in milliseconds."""
        now_ms, flat = await self._heartbeat(
            keys=[PROCESSES], args=[self.owner, self.ttl_ms, "1" if leaving else "0"]
        )
        return int(now_ms), {flat[i]: int(float(flat[i + 1])) for i in range(0, len(flat), 2)}

    async def holders(self, pairs: Sequence[Pair]) -> list[tuple[str | None, int]]:
        """Each lease's value (None: free) and milliseconds left (PTTL)."""
        if not pairs:
            return []
        # Not transactional: the keys live in many slots (a cluster splits it per node).
        async with self.redis.pipeline(transaction=False) as pipe:
            for pair in pairs:
                pipe.get(lease_key(*pair))
                pipe.pttl(lease_key(*pair))
            replies = await pipe.execute()
        return [(replies[2 * i], int(replies[2 * i + 1])) for i in range(len(pairs))]

    async def acquire(self, pairs: Sequence[Pair]) -> list[str | BaseException | None]:
        """Take each lease if free: its new value, None if another holds it."""
        calls = [
            ([lease_key(*pair), store_key(pair[0], "meta")],
             [self.owner, self.ttl_ms, f"lease_token:{pair[1]}"])
            for pair in pairs
        ]  # fmt: skip
        return await self._each(self._acquire, calls)

    async def renew(self, leases: Sequence[tuple[Pair, str]]) -> list[int | BaseException]:
        """Extend each lease that still has the given value: 1, else 0."""
        calls = [([lease_key(*pair)], [value, self.ttl_ms]) for pair, value in leases]
        return await self._each(self._renew, calls)

    async def release(self, pair: Pair, value: str) -> bool:
        """Delete the lease if it still has the given value."""
        return bool(await self._release(keys=[lease_key(*pair)], args=[value]))

    async def _each(self, script: Any, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        """One script over many leases; an exception in place of each call that failed."""
        if not calls:
            return []
        if isinstance(self.redis, RedisCluster):
            limit = asyncio.Semaphore(CONCURRENCY)

            async def one(keys: list[Any], args: list[Any]) -> Any:
                async with limit:
                    return await script(keys=keys, args=args)

            return await asyncio.gather(*(one(*call) for call in calls), return_exceptions=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute(raise_on_error=False))


def _own_connections(redis: Any) -> Any:
    """A client of the same Redis with a few connections of its own (a cluster client never
    makes a caller wait for a connection: it is used as it is)."""
    if not isinstance(redis, aioredis.Redis):
        return redis
    pool = redis.connection_pool
    own = aioredis.BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=CONNECTIONS,
        timeout=None,
        **pool.connection_kwargs,
    )
    return aioredis.Redis.from_pool(own)


async def lease_status(redis: Any, store: str, source: str) -> dict[str, Any] | None:
    """Who polls a store's source now (any process can ask): holder, token, seconds left."""
    key = lease_key(store, source)
    async with redis.pipeline(transaction=False) as pipe:
        value, pttl_ms = await pipe.get(key).pttl(key).execute()
    found = holder(value)
    if found is None:
        return None
    return {"holder": found[1], "token": found[0], "expires_in": max(0, pttl_ms) / 1000}


async def live_processes(redis: Any) -> dict[str, float]:
    """Every process that announced itself within its lease ttl -> epoch seconds it last did."""
    members = await redis.zrange(PROCESSES, 0, -1, withscores=True)
    return {process: score / 1000 for process, score in members}
