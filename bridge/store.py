"""Redis state of the bridge: job states, open jobs, the outbox (its Lua is in bridge.storelua).

The keys of one store (bridge.keys) share the hash tag `{<store>}`, so every script touches
one cluster slot. A job's record in `jobs`: open "status|version|seq|stalled", finished
"status||seq|minute" (minute of its last activity; forgotten a retention after it, see
`forget_finished`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii as _quote  # how json.dumps writes a str
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from bridge import jsoncodec
from bridge.analytics import JobAnalytics, Tally, newly_finished
from bridge.events import build_event, event_id, stalled_event_id
from bridge.jobs import TERMINAL, Job, format_timestamp, now_iso
from bridge.keys import lease_key, store_key
from bridge.storelua import FORGET, OBSERVE, STALL

# Jobs per observe script call (a page of the API at most): a call holds Redis for about
# 10 us per job, and a bigger batch is sent as several calls in a row.
OBSERVE_BATCH = 100
ROWS_STEP = 10  # jobs


DAY = 86_400.0
_ENCODER = json.JSONEncoder(separators=(",", ":"))
# json.dumps(..., separators=(",", ":")) without building an encoder on every call (hot path).
_C_ENCODE = (
    c_make_encoder(None, _ENCODER.default, _quote, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)


def _encode(value: Any) -> str:
    return "".join(_C_ENCODE(value, 0)) if _C_ENCODE is not None else _ENCODER.encode(value)


OUTBOX_LAG_CAP = 100_000  # counting further than this (Redis < 7) costs more than it tells


class Fenced(Exception):
    """A write refused: the poll lease it was made under is no longer the writer's."""

    def __init__(self, store: str, source: str, fence: str) -> None:
        super().__init__(f"the poll lease of {store}/{source} is no longer {fence!r}")
        self.store = store
        self.source = source


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
    result: str  # emitted | recorded | unchanged | stale | lost
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
    known = [stamp for stamp in stamps if stamp is not None]
    return max(known).timestamp() if known else None


def _stamp(value: datetime | None) -> str:
    text = format_timestamp(value)
    return "null" if text is None else f'"{text}"'


def job_json(job: Job) -> str:
    """`json.dumps(job.to_dict(), separators=(",", ":"))`, written out: in half the time."""
    return (
        f'{{"id":{_quote(job.id)},"type":{_quote(job.type)},"status":{_quote(job.status)},'
        f'"created_at":{_stamp(job.created_at)},"started_at":{_stamp(job.started_at)},'
        f'"completed_at":{_stamp(job.completed_at)},"updated_at":{_stamp(job.updated_at)},'
        f'"meta":{_encode(job.meta)}}}'
    )


def _minute(seconds: float) -> int:
    return int(seconds // 60)


def _newly_finished(batch: list[Observation], outcomes: list[Outcome]) -> list[Job]:
    return newly_finished(
        (obs.job, out.result, out.previous_status) for obs, out in zip(batch, outcomes, strict=True)
    )


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

    def lease_key(self, source: str) -> str:
        """The poll lease of one source (bridge.leases), checked by every write of a poller."""
        return lease_key(self.name, source)

    async def observe(
        self, observations: Iterable[Observation], *, marker: str = "", fence: str = ""
    ) -> list[Outcome]:
        """Observe jobs: one atomic script call per source and batch of OBSERVE_BATCH jobs.

        With `marker` (a meta field), an observation made after Redis lost that field writes
        nothing and comes back `lost`. With `fence` (the value of the source's poll lease the
        caller holds), nothing is written once the lease is another's: `Fenced` is raised.
        """
        observations = list(observations)
        header = [marker, fence, now_iso(), self.name]
        outcomes: list[Outcome] = []
        # The CPU work (building a batch, counting the jobs the one before finished) is done
        # while Redis runs the batch sent last: the two processes overlap.
        finished = Tally()
        ended: list[Job] = []  # jobs that the last batch answered finished, not yet counted
        sent: asyncio.Future[list[Outcome]] | None = None
        carried: list[Observation] = []  # the batch `sent` carries
        try:
            for source, group in groupby(observations, key=lambda obs: obs.job.source):
                batch = list(group)
                for at in range(0, len(batch), OBSERVE_BATCH):
                    chunk = batch[at : at + OBSERVE_BATCH]
                    jobs = await self._rows(chunk)  # yields: `sent` reaches Redis meanwhile
                    finished.add(ended)
                    done = await sent if sent is not None else []
                    sent = asyncio.ensure_future(
                        self._observe_batch(source, [*header, source, jobs], len(chunk))
                    )
                    outcomes += done
                    ended = _newly_finished(carried, done)
                    carried = chunk
            done = await sent if sent is not None else []
            outcomes += done
            finished.add(ended).add(_newly_finished(carried, done))
        finally:
            if sent is not None and not sent.done():
                sent.cancel()
        await self.analytics.write(finished)
        return outcomes

    async def _rows(self, chunk: list[Observation]) -> str:
        """The observe script's argument for `chunk`, built in steps of ROWS_STEP jobs with a
        yield between them: the batch sent before makes its way to Redis meanwhile (a
        request takes the Redis client several event-loop steps to write), so Redis runs it
        while this one is being built."""
        rows = []
        for at in range(0, len(chunk), ROWS_STEP):
            rows += [self._observe_row(obs) for obs in chunk[at : at + ROWS_STEP]]
            await asyncio.sleep(0)
        return "".join(rows)

    async def _observe_batch(self, source: str, args: list[str], count: int) -> list[Outcome]:
        keys = [self.jobs_key, self.open_key, self.events_key, self.meta_key]
        reply = await self._observe(keys=[*keys, self.lease_key(source)], args=args)
        if reply[0] == "fenced":
            raise Fenced(self.name, source, args[1])
        if reply[0] == "lost":
            return [Outcome("lost", 0, None)] * count
        return [
            Outcome(reply[at], int(reply[at + 1]), reply[at + 2] or None)
            for at in range(0, len(reply), 3)
        ]

    def _observe_row(self, obs: Observation) -> str:
        job = obs.job
        extra: dict[str, Any] = {}
        if obs.errors:
            extra["errors"] = list(obs.errors)
        if obs.file_locations:
            extra["file_locations"] = list(obs.file_locations)
        terminal = job.terminal
        fields = (  # in the order the observe script reads them
            job.id,
            job.status,
            str(job.version),
            "1" if obs.silent else "0",
            "" if terminal else str(obs.stall_reference_ms or 0),
            str(_minute(last_activity(job) or time.time())) if terminal else "",
            event_id(self.name, job.source, job.id, job.status),
            _encode(extra) if extra else "{}",
            job_json(job),
        )
        return "\x1e" + "\x1f".join(fields)

    async def mark_stalled(self, job: Job, *, fence: str = "") -> bool:
        """Emit one `stalled` event for a job still pending/started; False if already done.

        `fence`: as for `observe`.
        """
        reply = await self._stall(
            keys=[self.jobs_key, self.events_key, self.lease_key(job.source)],
            args=[
                f"{job.source}:{job.id}",
                job.status,
                stalled_event_id(self.name, job.source, job.id, job.status),
                now_iso(),
                self.name,
                job.source,
                job_json(job),
                fence,
            ],
        )
        if reply[0] == "fenced":
            raise Fenced(self.name, job.source, fence)
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
        except redis.exceptions.ResponseError as exc:
            if "no such key" not in str(exc).lower():  # a cluster failing over, say
                raise
            groups = []  # no stream yet
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
    extra = jsoncodec.loads(fields.get("extra") or "{}")
    return build_event(
        id=fields["id"],
        store=fields["store"],
        source=fields["source"],
        status=fields["status"],
        previous_status=fields.get("prev") or None,
        sequence=int(fields["seq"]),
        time=fields["time"],
        job=jsoncodec.loads(fields["job"]),
        errors=extra.get("errors"),
        file_locations=extra.get("file_locations"),
    )
