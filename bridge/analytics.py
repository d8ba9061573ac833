"""Job analytics: per-minute counts and durations of finished jobs, in Redis for a bounded time.

jb:{<store>}:analytics:<minute>  hash  "<source>|<job type>|<field>" -> number; expires after
                                       `retention` (default 7 days). <minute> = epoch // 60.
  success, failed, cancelled   jobs that reached that status during the minute
  run_n, run_sum, run_b<i>     started_at -> completed_at (seconds): count, sum, bucket i
  wait_n, wait_sum, wait_b<i>  created_at -> started_at
Bucket i counts durations up to BOUNDS[i] (not cumulative); i = len(BOUNDS) is the overflow.
A job is recorded once: when its observation moves it from an open status to a finished one.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bridge.jobs import TERMINAL, Job, format_epoch
from bridge.keys import store_key

RETENTION = 7 * 86_400
# Upper bounds (seconds) of the duration buckets, shared with the Prometheus histograms.
BOUNDS = (
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0,
)  # fmt: skip
MAX_POINTS = 120  # a chart gets at most this many time steps; longer windows merge minutes
PHASES = ("run", "wait")

JobObserver = Callable[[str, Job, float | None, float | None], None]


def durations(job: Job) -> tuple[float | None, float | None]:
    """(wait, run) in seconds: created -> started and started -> completed, when both known."""

    def between(start: Any, end: Any) -> float | None:
        if start is None or end is None:
            return None
        seconds = (end - start).total_seconds()
        return seconds if seconds >= 0 else None

    return between(job.created_at, job.started_at), between(job.started_at, job.completed_at)


def newly_finished(jobs: Iterable[tuple[Job, str, str | None]]) -> list[Job]:
    """The jobs of (job, outcome result, previous status) that an observation just finished."""
    return [
        job
        for job, result, previous in jobs
        if result == "emitted" and job.terminal and previous not in TERMINAL
    ]


def _field(source: str, job_type: str, name: str) -> str:
    return f"{source}|{job_type.replace('|', '/')}|{name}"


class Tally:
    """Finished jobs counted before they are written: a batch of similar jobs costs a few
    commands, not a few per job. Keyed by tuples while counting (cheap), spelt as hash fields
    once per distinct field."""

    def __init__(self) -> None:
        self.measured: list[tuple[Job, float | None, float | None]] = []
        self._statuses: Counter[tuple[str, str, str]] = Counter()
        self._buckets: Counter[tuple[str, str, str, int]] = Counter()
        self._seconds: defaultdict[tuple[str, str, str], float] = defaultdict(float)

    def add(self, jobs: Iterable[Job]) -> Tally:
        for job in jobs:
            wait, run = durations(job)
            self.measured.append((job, wait, run))
            self._statuses[job.source, job.type, job.status] += 1
            if run is not None:
                self._buckets[job.source, job.type, "run", bisect.bisect_left(BOUNDS, run)] += 1
                self._seconds[job.source, job.type, "run"] += run
            if wait is not None:
                self._buckets[job.source, job.type, "wait", bisect.bisect_left(BOUNDS, wait)] += 1
                self._seconds[job.source, job.type, "wait"] += wait
        return self

    def fields(self) -> tuple[Counter[str], dict[str, float]]:
        """The hash fields to increment: counts, and sums of seconds."""
        counts: Counter[str] = Counter()
        for (source, job_type, status), count in self._statuses.items():
            counts[_field(source, job_type, status)] += count
        for (source, job_type, phase, bucket), count in self._buckets.items():
            counts[_field(source, job_type, f"{phase}_n")] += count
            counts[_field(source, job_type, f"{phase}_b{bucket}")] += count
        sums = {
            _field(s, t, f"{phase}_sum"): total for (s, t, phase), total in self._seconds.items()
        }
        return counts, sums


class JobAnalytics:
    """The analytics of one store. `observers` also hear of every finished job (metrics)."""

    def __init__(self, redis: aioredis.Redis, store: str, *, retention: int = RETENTION) -> None:
        self.redis = redis
        self.store = store
        self.retention = retention
        self.observers: list[JobObserver] = []

    def key(self, minute: int) -> str:
        return store_key(self.store, f"analytics:{minute}")

    async def record(self, jobs: Sequence[Job], at: float | None = None) -> None:
        """Count finished jobs in the minute of `at` (now): one pipelined round trip."""
        await self.write(Tally().add(jobs), at)

    async def write(self, tally: Tally, at: float | None = None) -> None:
        """Add what `tally` counted to the minute of `at` (now); then tell the observers."""
        if not tally.measured:
            return
        key = self.key(int((time.time() if at is None else at) // 60))
        counts, sums = tally.fields()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, count in counts.items():
                pipe.hincrby(key, name, count)
            for name, total in sums.items():
                pipe.hincrbyfloat(key, name, round(total, 3))
            pipe.expire(key, self.retention)
            await pipe.execute()
        for job, wait, run in tally.measured:
            for observer in self.observers:
                observer(self.store, job, wait, run)

    async def minutes(self, first: int, last: int) -> list[tuple[int, dict[str, str]]]:
        """The buckets of minutes first..last (inclusive) that hold anything."""
        span = range(first, last + 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in span:
                pipe.hgetall(self.key(minute))
            found = await pipe.execute()
        return [(minute, fields) for minute, fields in zip(span, found, strict=True) if fields]


@dataclass(slots=True)
class _Phase:
    count: int = 0
    total: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": round(self.total, 3),
            "avg": round(self.total / self.count, 3) if self.count else None,
            "p50": quantile(0.5, self.buckets),
            "p90": quantile(0.9, self.buckets),
            "buckets": self.buckets,
        }


@dataclass(slots=True)
class _Series:
    points: int
    counts: dict[str, list[int]] = field(init=False)
    phases: dict[str, _Phase] = field(init=False)
    averages: dict[str, list[list[float]]] = field(init=False)  # per point: [sum, count]

    def __post_init__(self) -> None:
        self.counts = {status: [0] * self.points for status in sorted(TERMINAL)}
        self.phases = {phase: _Phase() for phase in PHASES}
        self.averages = {phase: [[0.0, 0] for _ in range(self.points)] for phase in PHASES}

    def add(self, point: int, name: str, value: str) -> None:
        if name in self.counts:
            self.counts[name][point] += int(value)
            return
        phase, _, part = name.partition("_")
        if phase not in self.phases:
            return
        stats = self.phases[phase]
        if part == "n":
            stats.count += int(value)
            self.averages[phase][point][1] += int(value)
        elif part == "sum":
            stats.total += float(value)
            self.averages[phase][point][0] += float(value)
        elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) < len(stats.buckets):
            stats.buckets[int(part[1:])] += int(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.counts,
            "totals": {status: sum(values) for status, values in self.counts.items()},
            **{phase: self.phases[phase].summary() for phase in PHASES},
            **{
                f"{phase}_avg": [round(s / n, 3) if n else None for s, n in self.averages[phase]]
                for phase in PHASES
            },
        }


def quantile(q: float, buckets: Sequence[int]) -> float | None:
    """Estimate a quantile from bucket counts, interpolating inside a bucket (as Prometheus)."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index == len(BOUNDS):
                return BOUNDS[-1]  # beyond the last bound: all we know is "more than"
            lower = BOUNDS[index - 1] if index else 0.0
            return round(lower + (BOUNDS[index] - lower) * (rank - seen) / count, 3)
        seen += count
    return BOUNDS[-1]


async def report(
    analytics: Iterable[JobAnalytics], minutes: int, now: float | None = None
) -> dict[str, Any]:
    """Finished jobs per (store, source, job type) over the last `minutes`, for the console."""
    last = int((time.time() if now is None else now) // 60)
    step = max(1, math.ceil(minutes / MAX_POINTS))
    points = math.ceil(minutes / step)
    first = last - points * step + 1
    series: dict[tuple[str, str, str], _Series] = {}
    for one in analytics:
        for minute, fields in await one.minutes(first, last):
            point = (minute - first) // step
            for name, value in fields.items():
                source, job_type, what = [*name.split("|"), "", ""][:3]
                key = (one.store, source, job_type)
                series.setdefault(key, _Series(points)).add(point, what, value)
    return {
        "minutes": points * step,
        "step_seconds": step * 60,
        "start": format_epoch(first * 60),
        "end": format_epoch((last + 1) * 60),
        "bounds": list(BOUNDS),
        "types": [
            {"store": store, "source": source, "job_type": job_type, **found.to_dict()}
            for (store, source, job_type), found in sorted(series.items())
        ],
    }
