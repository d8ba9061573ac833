"""`ordering: job`: the events of one job reach a subscription in `sequence` order.

Each job has at most one event in flight per subscription, its *head* (being attempted, or
on the retry schedule). An event of a job that has a head *parks*: it is kept in Redis and
its outbox entry acknowledged only after that. When the head is delivered or dead-lettered,
the parked event with the lowest sequence becomes the head and goes on the retry schedule,
due now. A delivery off the retry schedule that is not its job's head (a replayed dead
letter) takes the head when the job has none, else parks behind it (`take_turns`). Order is
by what the subscription received: a job whose earlier events were filtered out, or emitted
before the subscription existed, waits for nothing.

Every key is the subscription's (hash tag `{sub:<name>}`, bridge.keys), so each script
touches one cluster slot. Admission follows the outbox order across replicas too: a batch
read by one replica waits while an older entry of the same consumer group is held, not yet
admitted, by another (`wait_turn`); entries claimed from a replica that died, or read again,
are admitted only up to the oldest such entry (`in_turn`). Each outbox stream's newest
admitted entry is kept: every entry up to it was admitted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from bridge.keys import (
    admitted_key,
    dead_letters_key,
    delivery_key,
    heads_key,
    parked_key,
    retry_key,
)

TURN_WAIT_MAX = 0.2  # seconds between looks at an older batch another replica holds

# Takes a batch of events (in outbox order): each becomes its job's head, or parks behind it.
ADMIT = """
local heads = KEYS[1]
local parked = KEYS[2]
local admitted = KEYS[3]
local stream = ARGV[1]
local newest = ARGV[2]   -- the batch's newest entry id ('' when none)
local function after(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) > tonumber(bm) end
  return tonumber(as) > tonumber(bs)
end
local go = {}
for i = 1, (#KEYS - 3) / 2 do
  local waiting = KEYS[2 + 2 * i]
  local delivery = KEYS[3 + 2 * i]
  local at = 3 + 4 * (i - 1)
  local job, id, seq, event = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local head = redis.call('HGET', heads, job)
  if not head or head == id then
    redis.call('HSET', heads, job, id)
    go[i] = 1
  else
    redis.call('HSETNX', delivery, 'event', event)
    redis.call('HSETNX', delivery, 'attempts', 0)
    redis.call('ZADD', waiting, seq, id)
    redis.call('HSET', parked, id, job)
    go[i] = 0
  end
end
if newest ~= '' then
  local mark = redis.call('HGET', admitted, stream)
  if not mark or after(newest, mark) then
    redis.call('HSET', admitted, stream, newest)
  end
end
return go
"""

# Due deliveries (retries, replayed dead letters, events released from parking), each job's
# lowest sequence first: each goes when it is its job's head, or becomes the head when the job
# has none (1); else it parks behind the head, off the retry schedule, its delivery kept (0).
TAKE_TURNS = """
local heads = KEYS[1]
local parked = KEYS[2]
local retry = KEYS[3]
local go = {}
for i = 1, #KEYS - 3 do
  local waiting = KEYS[3 + i]
  local at = 1 + 3 * (i - 1)
  local job, id, seq = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local head = redis.call('HGET', heads, job)
  if not head or head == id then
    redis.call('HSET', heads, job, id)
    go[i] = 1
  else
    redis.call('ZREM', retry, id)
    redis.call('ZADD', waiting, seq, id)
    redis.call('HSET', parked, id, job)
    go[i] = 0
  end
end
return go
"""

# A delivery is finished: delivered, or dead-lettered (then ARGV[4] is the oldest entry id the
# dead-letter stream keeps, and the rest its new entry's fields). Its retry state goes; when
# it was its job's head, the parked event with the lowest sequence takes its place, due now
# (returns 1). One script, so that a crash cannot leave a head behind that nothing releases.
FINISH = """
local heads = KEYS[1]
local parked = KEYS[2]
local waiting = KEYS[3]
local retry = KEYS[4]
local delivery = KEYS[5]
local dead_letters = KEYS[6]
local job = ARGV[1]
local id = ARGV[2]
local now = ARGV[3]
redis.call('ZREM', retry, id)
redis.call('DEL', delivery)
if #ARGV > 3 then
  redis.call('XADD', dead_letters, 'MINID', '~', ARGV[4], '*', unpack(ARGV, 5))
end
if redis.call('HGET', heads, job) ~= id then
  return 0
end
local next = redis.call('ZRANGE', waiting, 0, 0)
if #next == 0 then
  redis.call('HDEL', heads, job)
  return 0
end
redis.call('ZREM', waiting, next[1])
redis.call('HDEL', parked, next[1])
redis.call('HSET', heads, job, next[1])
redis.call('ZADD', retry, now, next[1])
return 1
"""


def job_of(event: dict[str, Any]) -> str:
    """The job an event belongs to, as ordering names it: `<store>:<source>:<job id>`."""
    data = event.get("data") or {}
    return f"{data.get('store', '')}:{data.get('source', '')}:{event.get('subject', '')}"


def finish_call(
    subscription: str, event: dict[str, Any], dead_letter: Sequence[Any] = ()
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of FINISH for `event`; `dead_letter`: the oldest entry id its
    stream keeps, then the fields of the dead letter to add."""
    job = job_of(event)
    keys = [
        heads_key(subscription),
        parked_key(subscription),
        parked_key(subscription, job),
        retry_key(subscription),
        delivery_key(subscription, event["id"]),
        dead_letters_key(subscription),
    ]
    return keys, [job, event["id"], int(time.time() * 1000), *dead_letter]


class Due(Protocol):
    """A delivery off the retry schedule (bridge.deliveries.PendingRetry)."""

    @property
    def event(self) -> dict[str, Any] | None: ...


D = TypeVar("D", bound=Due)


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class JobOrder:
    """Admission and release of one subscription's events, under `ordering: job`."""

    def __init__(self, redis: aioredis.Redis, subscription: str, group: str) -> None:
        self.redis = redis
        self.subscription = subscription
        self.group = group
        self._admit = redis.register_script(ADMIT)
        self._finish = redis.register_script(FINISH)
        self._take_turns = redis.register_script(TAKE_TURNS)

    async def wait_turn(self, stream: str, first: str, stop: asyncio.Event) -> bool:
        """Wait while an entry of `stream` older than `first` (the oldest of a batch just
        read) is held, not yet admitted, by another consumer of the group: its events come
        first. False when `stop` was set meanwhile."""
        pause = 0.005
        while not stop.is_set():
            mark = await self.redis.hget(admitted_key(self.subscription), stream)
            if mark is not None and _order(first) <= _order(mark):
                return True
            older = await self.redis.xpending_range(
                stream,
                self.group,
                min="-" if mark is None else f"({mark}",
                max=f"({first}",
                count=1,
            )
            if not older:
                return True
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pause = min(TURN_WAIT_MAX, pause * 2)
        return False

    async def in_turn(self, stream: str, ids: Sequence[str]) -> int:
        """How many of `ids` (entries claimed or read again, oldest first) may be admitted
        now: those older than every other entry of `stream` pending in the group, not yet
        admitted. Their batch is not contiguous in the outbox, as a fresh one is: an entry
        between two of them may still wait for its turn with another consumer, which in
        turn waits for the older of the two (so this never waits: the rest wait for a claim).
        """
        mark = await self.redis.hget(admitted_key(self.subscription), stream)
        newer = [i for i in ids if mark is None or _order(i) > _order(mark)]
        if not newer:
            return len(ids)
        pending = await self.redis.xpending_range(
            stream,
            self.group,
            min="-" if mark is None else f"({mark}",
            max=newer[-1],
            count=len(newer) + 1,  # enough to find the first that is not one of them
        )
        ours = set(newer)
        other = next((p["message_id"] for p in pending if p["message_id"] not in ours), None)
        if other is None:
            return len(ids)
        return sum(1 for i in ids if _order(i) < _order(other))

    async def admit(
        self, stream: str, events: Sequence[tuple[dict[str, Any], bytes]], newest: str
    ) -> list[bool]:
        """For each event, in order: True to deliver it now (it is its job's head), False
        when it parked (kept in Redis; its outbox entry may be acknowledged). `newest`: the
        batch's newest entry id, which admission in `stream` has now passed."""
        keys = [
            heads_key(self.subscription),
            parked_key(self.subscription),
            admitted_key(self.subscription),
        ]
        args: list[Any] = [stream, newest]
        for event, body in events:
            job = job_of(event)
            keys += [
                parked_key(self.subscription, job),
                delivery_key(self.subscription, event["id"]),
            ]
            args += [job, event["id"], int(event["sequence"]), body]
        go = await self._admit(keys=keys, args=args)
        return [bool(flag) for flag in go]

    async def take_turns(self, due: Sequence[D]) -> list[D]:
        """Those of the deliveries `due` (off the retry schedule) that are their job's head
        now; the others parked behind it. A retry is its job's head already; a replayed dead
        letter takes the head only when its job has none, so it holds back what follows it
        and never goes out beside another event of its job."""
        due = sorted(due, key=lambda d: int(d.event["sequence"]) if d.event else 0)
        events = [d.event for d in due if d.event is not None]
        if not events:
            return due
        sub = self.subscription
        keys = [heads_key(sub), parked_key(sub), retry_key(sub)]
        keys += [parked_key(sub, job_of(event)) for event in events]
        args = [x for e in events for x in (job_of(e), e["id"], int(e["sequence"]))]
        go = iter(await self._take_turns(keys=keys, args=args))
        return [d for d in due if d.event is None or next(go)]

    async def release(self, event: dict[str, Any]) -> bool:
        """`event` was delivered: the next of its job, if one waits, is due now (True)."""
        keys, args = finish_call(self.subscription, event)
        return bool(await self._finish(keys=keys, args=args))
