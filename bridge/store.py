"""Redis state of the bridge: job states, open jobs, the outbox, and the Lua that keeps them atomic.

The keys of one store (bridge.keys) share the hash tag `{<store>}`, so every script touches
one cluster slot. A job's record in `jobs`: open "status|version|seq|stalled", finished
"status||seq|minute" (minute of its last activity; forgotten a retention after it, see
`forget_finished`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from bridge.analytics import JobAnalytics, newly_finished
from bridge.events import build_event, event_id, stalled_event_id
from bridge.jobs import RANK, STATUSES, TERMINAL, Job, now_iso
from bridge.keys import store_key

# Compare-and-set of one job's state; appends an event to the outbox when the status changed.
OBSERVE = """
local jobs_key = KEYS[1]
local open_key = KEYS[2]
local events_key = KEYS[3]
local meta_key = KEYS[4]
local member = ARGV[1]              -- "<source>:<job id>"
local status = ARGV[2]
local version_text = ARGV[3]        -- updated_at in microseconds, 0 when unset
local version = tonumber(version_text)
local silent = ARGV[4] == "1"       -- baseline: record a job never seen before, no event
local open_score = ARGV[5]          -- stall reference (ms) of an open job, "" once finished
local event_id = ARGV[6]
local observed_at = ARGV[7]
local store = ARGV[8]
local source = ARGV[9]
local job_json = ARGV[10]
local extra_json = ARGV[11]
local finished_minute = ARGV[12]    -- a finished job's last activity (minutes), "" while open
local marker = ARGV[13]             -- meta field that must exist, "" for none

-- A Redis that lost its data (restart without persistence, FLUSHDB) has no marker: write
-- nothing, so that the poller notices and recovers instead of recording changes silently.
if marker ~= '' and redis.call('HEXISTS', meta_key, marker) == 0 then
  return {'lost', 0, ''}
end

-- A finished job's record needs no version (nothing it says later changes it) but carries
-- the minute it finished, for retention: 8 bytes per record less in Redis's allocator.
local function state(seq, stalled)
  if finished_minute ~= '' then
    return status .. '||' .. seq .. '|' .. finished_minute
  end
  return status .. '|' .. version_text .. '|' .. seq .. '|' .. stalled
end

local rank = RANKS                  -- bridge.jobs.RANK: the lifecycle order
local stored = redis.call('HGET', jobs_key, member)
local prev_status = ''
local seq = 0
if stored then
  local s, v, q, t = string.match(stored, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  seq = tonumber(q)
  if v == '' then
    return {s == status and 'unchanged' or 'stale', seq, s}
  end
  local stored_version = tonumber(v)
  if version < stored_version then
    return {'stale', seq, s}
  end
  if s == status then
    if version > stored_version then
      redis.call('HSET', jobs_key, member, state(seq, t))
    end
    return {'unchanged', seq, s}
  end
  -- Jobs never move backwards. updated_at does not move when a job completes, so a late
  -- read of an earlier status carries the same version: refuse it by the lifecycle order.
  local old_rank = rank[s] or 0
  local new_rank = rank[status] or 0
  if new_rank < old_rank or (new_rank == old_rank and version == stored_version) then
    return {'stale', seq, s}
  end
  prev_status = s
else
  redis.call('HINCRBY', meta_key, 'count:' .. source, 1)
  if silent then
    redis.call('HSET', jobs_key, member, state(0, '0'))
    if open_score ~= '' then
      redis.call('ZADD', open_key, open_score, member)
    end
    return {'recorded', 0, ''}
  end
end

seq = seq + 1
redis.call('HSET', jobs_key, member, state(seq, '0'))
if open_score ~= '' then
  redis.call('ZADD', open_key, open_score, member)
else
  redis.call('ZREM', open_key, member)
end
redis.call('XADD', events_key, '*',
  'id', event_id, 'store', store, 'source', source, 'status', status,
  'prev', prev_status, 'seq', seq, 'time', observed_at, 'job', job_json, 'extra', extra_json)
return {'emitted', seq, prev_status}
""".replace("RANKS", "{" + ", ".join(f"{status} = {RANK[status]}" for status in STATUSES) + "}")

# Finished jobs' records past retention: each (member, value read, replacement) is applied
# only if the record still holds that value; an empty replacement deletes it.
FORGET = """
local jobs_key = KEYS[1]
local forgotten = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', jobs_key, ARGV[i]) == ARGV[i + 1] then
    if ARGV[i + 2] == '' then
      redis.call('HDEL', jobs_key, ARGV[i])
      forgotten = forgotten + 1
    else
      redis.call('HSET', jobs_key, ARGV[i], ARGV[i + 2])
    end
  end
end
return forgotten
"""

# One `stalled` event for a job still in `expected` status; the flag resets on a status change.
STALL = """
local jobs_key = KEYS[1]
local events_key = KEYS[2]
local member = ARGV[1]
local expected = ARGV[2]
local event_id = ARGV[3]
local observed_at = ARGV[4]
local store = ARGV[5]
local source = ARGV[6]
local job_json = ARGV[7]

local stored = redis.call('HGET', jobs_key, member)
if not stored then
  return {'unknown', 0}
end
local s, v, q, t = string.match(stored, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if s ~= expected or t == '1' then
  return {'skipped', tonumber(q)}
end
local seq = tonumber(q) + 1
redis.call('HSET', jobs_key, member, s .. '|' .. v .. '|' .. seq .. '|1')
redis.call('XADD', events_key, '*',
  'id', event_id, 'store', store, 'source', source, 'status', 'stalled',
  'prev', s, 'seq', seq, 'time', observed_at, 'job', job_json, 'extra', '{}')
return {'emitted', seq}
"""

DAY = 86_400.0
OUTBOX_LAG_CAP = 100_000  # counting further than this (Redis < 7) costs more than it tells


@dataclass(frozen=True, slots=True)
class StoredState:
    status: str
    version: int  # 0 for a finished job's record (it keeps no version)
    sequence: int
    stalled: bool
    finished_minute: int | None = None  # a finished job's last activity, minutes since epoch


@dataclass(frozen=True, slots=True)
class Observation:
    """One job as just read from the API, with what the event would carry."""

    job: Job
    silent: bool = False  # baseline: record a first sighting without an event
    stall_reference_ms: int | None = None  # when the job's current open phase began
    errors: Sequence[dict[str, Any]] = ()
    file_locations: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str  # emitted | recorded | unchanged | stale
    sequence: int
    previous_status: str | None


def parse_state(raw: str | None) -> StoredState | None:
    if raw is None:
        return None
    status, version, sequence, flag = raw.split("|")
    if not version:  # finished: "status||seq|minute"
        return StoredState(status, 0, int(sequence), False, int(flag))
    return StoredState(status, int(version), int(sequence), flag == "1")


def last_activity(job: Job) -> float | None:
    """The latest of the job's timestamps (seconds since the epoch): when it last changed."""
    stamps = (job.created_at, job.updated_at, job.started_at, job.completed_at)
    known = [stamp.timestamp() for stamp in stamps if stamp is not None]
    return max(known) if known else None


def _minute(seconds: float) -> int:
    return int(seconds // 60)


class Store:
    """The Redis state of one Elastic Path store."""

    def __init__(
        self, redis: aioredis.Redis, name: str, *, outbox_retention: float = 7 * DAY
    ) -> None:
        self.redis = redis
        self.name = name
        self.outbox_retention = outbox_retention
        self.jobs_key = store_key(name, "jobs")
        self.open_key = store_key(name, "open")
        self.meta_key = store_key(name, "meta")
        self.events_key = store_key(name, "events")
        self.analytics = JobAnalytics(redis, name)
        self._observe = redis.register_script(OBSERVE)
        self._stall = redis.register_script(STALL)
        self._forget = redis.register_script(FORGET)

    async def states(self, source: str, job_ids: Sequence[str]) -> list[StoredState | None]:
        """The stored state of each job, in order (None for never seen)."""
        if not job_ids:
            return []
        raw = await self.redis.hmget(self.jobs_key, [f"{source}:{i}" for i in job_ids])
        return [parse_state(r) for r in raw]

    async def observe(
        self, observations: Iterable[Observation], *, marker: str = ""
    ) -> list[Outcome]:
        """Run the observe script for each observation, pipelined; each one is atomic.

        With `marker` (a meta field), an observation made after Redis lost that field writes
        nothing and comes back `lost`.
        """
        observations = list(observations)
        if not observations:
            return []
        observed_at = now_iso()
        async with self.redis.pipeline(transaction=False) as pipe:
            for obs in observations:
                await self._observe(
                    keys=[self.jobs_key, self.open_key, self.events_key, self.meta_key],
                    args=[*self._observe_args(obs, observed_at), marker],
                    client=pipe,
                )
            replies = await pipe.execute()
        outcomes = [Outcome(str(r[0]), int(r[1]), str(r[2]) or None) for r in replies]
        await self.analytics.record(
            newly_finished(
                (obs.job, out.result, out.previous_status)
                for obs, out in zip(observations, outcomes, strict=True)
            )
        )
        return outcomes

    def _observe_args(self, obs: Observation, observed_at: str) -> list[Any]:
        job = obs.job
        open_score = "" if job.terminal else str(obs.stall_reference_ms or 0)
        extra: dict[str, Any] = {}
        if obs.errors:
            extra["errors"] = list(obs.errors)
        if obs.file_locations:
            extra["file_locations"] = list(obs.file_locations)
        return [
            f"{job.source}:{job.id}",
            job.status,
            job.version,
            "1" if obs.silent else "0",
            open_score,
            event_id(self.name, job.source, job.id, job.status),
            observed_at,
            self.name,
            job.source,
            json.dumps(job.to_dict(), separators=(",", ":")),
            json.dumps(extra, separators=(",", ":")),
            _minute(last_activity(job) or time.time()) if job.terminal else "",
        ]

    async def mark_stalled(self, job: Job) -> bool:
        """Emit one `stalled` event for a job still pending/started; False if already done."""
        reply = await self._stall(
            keys=[self.jobs_key, self.events_key],
            args=[
                f"{job.source}:{job.id}",
                job.status,
                stalled_event_id(self.name, job.source, job.id, job.status),
                now_iso(),
                self.name,
                job.source,
                json.dumps(job.to_dict(), separators=(",", ":")),
            ],
        )
        return reply[0] == "emitted"

    async def open_jobs(self, source: str) -> dict[str, int]:
        """Open jobs of one source: job id -> stall reference (ms)."""
        prefix = f"{source}:"
        members = await self.redis.zrange(self.open_key, 0, -1, withscores=True)
        return {m[len(prefix) :]: int(score) for m, score in members if m.startswith(prefix)}

    async def forget_open(self, source: str, job_id: str) -> None:
        """A job the API no longer knows (404): stop watching it, keep its history."""
        await self.redis.zrem(self.open_key, f"{source}:{job_id}")

    async def forget_finished(self, source: str, before: float, *, batch: int = 1000) -> int:
        """Delete the records of `source`'s jobs that finished before `before` (epoch seconds).

        One HSCAN pass, a compare-and-delete per batch: cheap enough to run every hour.
        Records written before they carried their finishing minute get this minute (their
        retention starts now). Returns how many records were forgotten.
        """
        cutoff = _minute(before)
        now = _minute(time.time())
        forgotten = 0
        cursor = 0
        while True:
            cursor, entries = await self.redis.hscan(
                self.jobs_key, cursor, match=f"{source}:*", count=batch
            )
            changes: list[str] = []
            for member, raw in entries.items():
                state = parse_state(raw)
                if state is None or state.status not in TERMINAL:
                    continue
                if state.finished_minute is None:
                    changes += [member, raw, f"{state.status}||{state.sequence}|{now}"]
                elif state.finished_minute < cutoff:
                    changes += [member, raw, ""]
            if changes:
                forgotten += int(await self._forget(keys=[self.jobs_key], args=changes))
            if cursor == 0:
                return forgotten

    async def get_meta(self, field: str) -> str | None:
        return await self.redis.hget(self.meta_key, field)

    async def get_metas(self, *fields: str) -> list[str | None]:
        return await self.redis.hmget(self.meta_key, list(fields))

    async def set_meta(self, **fields: str | int | float) -> None:
        await self.redis.hset(self.meta_key, mapping={k: str(v) for k, v in fields.items()})

    async def delete_meta(self, *fields: str) -> None:
        await self.redis.hdel(self.meta_key, *fields)

    async def known_count(self, source: str) -> int:
        return int(await self.get_meta(f"count:{source}") or 0)

    async def source_status(self, source: str) -> dict[str, Any]:
        """What the bridge knows of one source, from Redis alone (any process can ask)."""
        baseline, last_poll, known = await self.get_metas(
            f"baseline:{source}", f"last_poll:{source}", f"count:{source}"
        )
        return {
            "baseline_done": baseline is not None,
            "last_poll_at": float(last_poll) if last_poll else None,
            "open_jobs": len(await self.open_jobs(source)),
            "known_jobs": int(known or 0),
        }

    async def outbox_status(self, group: str) -> dict[str, int | None]:
        """Outbox length, and what `group` has yet to read (lag) or acknowledge (pending)."""
        length = await self.redis.xlen(self.events_key)
        try:
            groups = await self.redis.xinfo_groups(self.events_key)
        except redis.exceptions.ResponseError:  # no stream yet
            groups = []
        info = next((g for g in groups if g.get("name") == group), None)
        if info is None:
            return {"length": length, "pending": None, "lag": length}
        lag = info.get("lag")
        if lag is None:  # Redis before 7 does not say: count what follows the group's cursor
            lag = len(
                await self.redis.xrange(
                    self.events_key, min=f"({info['last-delivered-id']}", count=OUTBOX_LAG_CAP
                )
            )
        return {"length": length, "pending": info.get("pending"), "lag": lag}


def event_from_outbox(fields: dict[str, str]) -> dict[str, Any]:
    """The CloudEvent of an outbox entry."""
    extra = json.loads(fields.get("extra") or "{}")
    return build_event(
        id=fields["id"],
        store=fields["store"],
        source=fields["source"],
        status=fields["status"],
        previous_status=fields.get("prev") or None,
        sequence=int(fields["seq"]),
        time=fields["time"],
        job=json.loads(fields["job"]),
        errors=extra.get("errors"),
        file_locations=extra.get("file_locations"),
    )
