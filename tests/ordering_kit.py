"""What the ordering tests share: a webhook receiver that records each job's events and fails
the ones it is told to, and jobs moved through statuses by the real observe script."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from lanes_harness import STORE, ServerFactory, hook, serve

from bridge.events import event_id
from bridge.jobs import Job, JobStatus
from bridge.store import Observation, Store


@dataclass
class Hit:
    at: float  # time.monotonic() on arrival
    job: str
    status: str
    sequence: int
    code: int


@dataclass
class JobReceiver:
    """Answers 500 to the (job, status) pairs in `failing` (a count, or -1 for ever), else
    204 after `delay` seconds (a random share of it with `jitter`)."""

    failing: dict[tuple[str, str], int] = field(default_factory=dict)
    delay: float = 0.0
    jitter: bool = False
    url: str = ""
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        job, status = event["subject"], event["data"]["status"]
        left = self.failing.get((job, status), 0)
        code = 500 if left else 204
        if left > 0:
            self.failing[(job, status)] = left - 1
        if code == 204 and self.delay:
            await asyncio.sleep(self.delay * (random.random() if self.jitter else 1.0))
        self.hits.append(Hit(time.monotonic(), job, status, int(event["sequence"]), code))
        return web.Response(status=code)

    def of(self, job: Job) -> list[tuple[str, int]]:
        return [(h.status, h.code) for h in self.hits if h.job == job.id]

    def delivered(self, job: Job, status: str) -> float | None:
        return next(
            (h.at for h in self.hits if (h.job, h.status, h.code) == (job.id, status, 204)), None
        )


async def receiver(aiohttp_server: ServerFactory, **options: Any) -> JobReceiver:
    found: JobReceiver = await serve(aiohttp_server, JobReceiver(**options))
    return found


def ordered(name: str, target: JobReceiver, **options: Any) -> Any:
    options = {"ordering": "job", "retry_schedule": ["100ms"] * 5, **options}
    return hook(name, target, **options)  # type: ignore[arg-type]


async def move(redis: aioredis.Redis, job: Job, *statuses: str) -> Job:
    """The job through `statuses`, each an event in the outbox; the job as it ends."""
    for status in statuses:
        job = dataclasses.replace(
            job,
            status=JobStatus(status),
            updated_at=(job.updated_at or datetime.now(UTC)) + timedelta(1),
        )
        [outcome] = await Store(redis, STORE).observe([Observation(job)])
        assert outcome.result == "emitted"
    return job


def eid(job: Job, status: str) -> str:
    return event_id(STORE, "pcm", job.id, status)
