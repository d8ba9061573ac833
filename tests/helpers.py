"""Small helpers shared by the tests: waiting for a condition, secrets, ports, configs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from bridge.app import Bridge
from bridge.config import BridgeConfig, parse_config


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `predicate` (sync or async) until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# A store whose hash tag is in another slot (12193) than that of "shop" (3808), the store of
# most tests, on another master of the test cluster (three: slots 0-5460, 5461-10922, ...).
OTHER_STORE = "us-main"


def new_secret() -> str:
    """A fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WebhookReceiver:
    """A consumer's endpoint that verifies every signature and records (job id, status)."""

    secret: str = field(default_factory=new_secret)
    url: str = ""
    received: set[tuple[str, str]] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)  # every verified one, in order

    async def handle(self, request: web.Request) -> web.Response:
        event = Webhook(self.secret).verify(await request.read(), dict(request.headers))
        self.events.append(event)
        self.received.add((event["subject"], event["data"]["status"]))
        return web.Response(status=204)


async def start_receiver(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> WebhookReceiver:
    """A `WebhookReceiver` served at its `url` by pytest-aiohttp's `aiohttp_server`."""
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    receiver.url = str((await aiohttp_server(app)).make_url("/hook"))
    return receiver


# A store polling the simulator fast: what the end-to-end tests have in common.
FAST_STORE = {
    "client_id": "sim-client",
    "client_secret": "sim-secret",
    "poll_interval": "100ms",
    "idle_poll_interval": "200ms",
    "max_requests_per_second": 100,
}


def webhook(name: str, url: object, secret: str, **options: Any) -> dict[str, Any]:
    """One webhook subscription of a config; `options` add to or override its keys."""
    return {"name": name, "type": "webhook", "url": str(url), "secrets": [secret], **options}


def config_text(
    redis_url: str | dict[str, Any],
    store: str | Sequence[str],
    api_base: str,
    subscriptions: list[dict[str, Any]],
    *,
    store_options: dict[str, Any] | None = None,
    **top: Any,
) -> str:
    """A config file: one store (or several alike) on the simulator at `api_base`,
    `subscriptions`, and any top-level keys (`api`, `data_dir`, ...). Written as JSON, which is
    YAML. `redis_url`: a url, or the whole `redis` section (RedisTarget.config)."""
    names = [store] if isinstance(store, str) else list(store)
    options = {"api_base": api_base, **FAST_STORE, **(store_options or {})}
    data = {
        "redis": redis_url if isinstance(redis_url, dict) else {"url": redis_url},
        **top,
        "stores": [{"name": name, **options} for name in names],
        "subscriptions": subscriptions,
    }
    return json.dumps(data, default=str)


def make_config(*args: Any, **kwargs: Any) -> BridgeConfig:
    """`config_text`, parsed as `jobs-bridge run` would."""
    return parse_config(config_text(*args, **kwargs), environ={})


@contextlib.asynccontextmanager
async def running(
    config: BridgeConfig,
    redis: aioredis.Redis,
    claim_idle: float = 120.0,
    config_path: Path | None = None,
) -> AsyncIterator[Bridge]:
    """A Bridge running in a task; stopped gracefully at the end (and it must not have died).
    `config_path`: the file `bridge.live.reload()` reads, as on SIGHUP."""
    stop = asyncio.Event()
    bridge = Bridge(config, redis, claim_idle=claim_idle, config_path=config_path)
    task = asyncio.create_task(bridge.run(stop))
    try:
        # Consumer groups start at the end of the outbox: events written before would be
        # history (`replay --since`), as for a bridge seeing its subscriptions for the first time.
        await asyncio.wait_for(bridge.dispatcher.prepared.wait(), 10)
        yield bridge
        assert not task.done(), "the bridge stopped by itself"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
