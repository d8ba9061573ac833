"""Keys grouped by Redis Cluster hash slot: a command over many keys runs once per slot.

A cluster refuses a multi-key command whose keys lie in different slots (CROSSSLOT), and each
store's keys have a hash tag of their own (bridge.keys), so reading every outbox of a process
takes one call per slot there. On a single Redis every key is in one group: one call, as
before there were clusters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

ONE_SERVER = 0  # the one group of a single Redis

Streams = dict[str, str]  # stream key -> the id to read after
# Issues one command over `streams` on a client or a pipeline (whose methods queue it).
Command = Callable[[Any, Streams], Any]


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def by_slot(redis: Any, keys: Sequence[str]) -> dict[int, list[str]]:
    """`keys` by hash slot on a cluster, each group in the order given; on a single Redis,
    all of them under ONE_SERVER. No group when there are no keys."""
    if not keys:
        return {}
    if not is_cluster(redis):
        return {ONE_SERVER: list(keys)}
    return {slot: list(group) for slot, group in _by_slot(tuple(keys))}


@functools.lru_cache(maxsize=256)
def _by_slot(keys: tuple[str, ...]) -> tuple[tuple[int, tuple[str, ...]], ...]:
    # Cached: the outbox keys of a process change only with a reload, and lanes read often.
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return tuple((slot, tuple(group)) for slot, group in groups.items())


async def per_slot(
    redis: Any, streams: Streams, command: Command, *, blocking: bool = False
) -> list[tuple[list[str], Any]]:
    """`command(client, streams)` for the `streams` of each hash slot: the keys of each
    call and its reply, or the error it raised (one slot failing over spoils no other's
    reply). On a single Redis, one call with every stream. On a cluster, one pipeline: each
    node gets its slots' commands at once, on one connection (a read over hundreds of
    outboxes takes a connection per node, not per slot); `blocking` commands instead each
    take a connection of their own, all at once, so that none waits behind another."""
    groups = by_slot(redis, list(streams))
    if len(groups) <= 1:
        keys = list(streams)
        try:
            return [(keys, await command(redis, streams))]
        except Exception as exc:
            return [(keys, exc)]
    parts = [{key: streams[key] for key in keys} for keys in groups.values()]
    if blocking:
        calls = (command(redis, part) for part in parts)
        replies = await asyncio.gather(*calls, return_exceptions=True)
    else:
        async with redis.pipeline(transaction=False) as pipe:
            for part in parts:
                command(pipe, part)
            replies = await pipe.execute(raise_on_error=False)
    return [(list(part), reply) for part, reply in zip(parts, replies, strict=True)]


async def xreadgroup(
    redis: Any, group: str, consumer: str, streams: Streams, count: int
) -> list[tuple[list[str], Any]]:
    """XREADGROUP of `group` as `consumer` over `streams`, per hash slot (see per_slot)."""

    def command(client: Any, part: Streams) -> Any:
        return client.xreadgroup(group, consumer, part, count=count)

    return await per_slot(redis, streams, command)
