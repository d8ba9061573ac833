"""What the lane tests share: real webhook receivers, events written by the real Store, and a
Dispatcher running over real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import OTHER_STORE, new_secret

from bridge.dispatcher import Dispatcher
from bridge.events import event_id
from bridge.jobs import Job
from bridge.sinks.base import SinkContext
from bridge.sinks.registry import build_sink
from bridge.sinks.webhook import WebhookSubscription
from bridge.store import Observation, Store

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
STORE = "shop"
STORES = (STORE, OTHER_STORE)  # on the cluster: two slots, two masters
SECRET = new_secret()


@dataclass
class Endpoint:
    """A webhook receiver: answers 204 after `delay` seconds (forever when `hang`)."""

    delay: float = 0.0
    hang: bool = False
    status: int = 204
    url: str = ""
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # event id -> monotonic times

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.setdefault(request.headers["webhook-id"], []).append(time.monotonic())
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status)

    def counts(self) -> Counter[str]:
        return Counter({eid: len(times) for eid, times in self.arrivals.items()})


async def serve(aiohttp_server: ServerFactory, found: Any) -> Any:
    """`found.handle` served at POST /hook; its address in `found.url`."""
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    found.url = str((await aiohttp_server(app)).make_url("/hook"))
    return found


async def endpoint(aiohttp_server: ServerFactory, **options: Any) -> Endpoint:
    found: Endpoint = await serve(aiohttp_server, Endpoint(**options))
    return found


def hook(name: str, target: Endpoint, **options: Any) -> WebhookSubscription:
    data = {
        "name": name,
        "type": "webhook",
        "url": target.url,
        "secrets": [SECRET],
        "allow_private_networks": True,
        "retry_schedule": ["1s"],
        **options,
    }
    return WebhookSubscription.model_validate(data)


def dispatcher(
    redis: aioredis.Redis, subs: list[Any], stores: Sequence[str] = (STORE,), **options: Any
) -> Dispatcher:
    """A dispatcher of `subs` over the outboxes of `stores`."""
    return Dispatcher(
        redis,
        [Store(redis, store).events_key for store in stores],
        subs,
        build_sink=lambda sub: build_sink(sub, SinkContext(redis, True)),
        **options,
    )


@contextlib.asynccontextmanager
async def dispatching(found: Dispatcher) -> AsyncIterator[Dispatcher]:
    stop = asyncio.Event()
    await found.prepare(stop)
    task = asyncio.create_task(found.run(stop))
    try:
        yield found
        assert not task.done(), "the dispatcher stopped by itself"
    finally:
        stop.set()
        await asyncio.wait_for(task, 40)


def new_job(status: str = "failed", job_type: str = "product-import") -> Job:
    now = datetime.now(UTC)
    return Job(
        id=str(uuid.uuid4()),
        source="pcm",
        type=job_type,
        status=status,
        created_at=now,
        updated_at=now,
    )


JOB_OF: dict[str, str] = {}  # event id -> job id, of every event emitted here


async def emit(
    redis: aioredis.Redis, count: int = 1, status: str = "failed", store: str = STORE, **job: Any
) -> list[str]:
    """`count` events, appended to the outbox of `store` by the real observe script."""
    jobs = [new_job(status, **job) for _ in range(count)]
    outcomes = await Store(redis, store).observe(Observation(j) for j in jobs)
    assert [o.result for o in outcomes] == ["emitted"] * count
    ids = [event_id(store, "pcm", j.id, status) for j in jobs]
    JOB_OF.update(zip(ids, (j.id for j in jobs), strict=True))
    return ids


async def emit_each(redis: aioredis.Redis, count: int = 1, **options: Any) -> list[str]:
    """`count` events in the outbox of each of STORES."""
    return [eid for store in STORES for eid in await emit(redis, count, store=store, **options)]
