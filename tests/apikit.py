"""A running bridge serving its API, over a simulated store and one local webhook receiver."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import eventually, free_port, new_secret, running

from bridge.app import Bridge
from bridge.config import parse_config
from bridge.simulator import Simulator, make_app

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
STORE = "console-store"
SUBSCRIPTION = "ops-hook"


@dataclass
class Hook:
    """A webhook receiver that answers 500 while `failing`, 204 otherwise."""

    failing: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.Response(status=500, text="receiver is down for the test")
        self.received.append(json.loads(await request.read()))
        return web.Response(status=204)


@dataclass
class Running:
    bridge: Bridge
    sim: Simulator
    hook: Hook
    base: str
    token: str | None

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Status and JSON body (or text, when it is not JSON) of a GET with the token."""
        async with aiohttp.ClientSession() as http:
            headers = {**self.auth, **kwargs.pop("headers", {})}
            async with http.get(self.base + path, headers=headers, **kwargs) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()


def api_config(sim_url: str, hook_url: str, redis_url: str, port: int, token: str | None) -> Any:
    """One store polled fast, one webhook subscription retried once, the API on `port`."""
    api: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if token:
        api["token"] = token
    store = {
        "name": STORE,
        "api_base": sim_url,
        "client_id": "sim-client",
        "client_secret": "sim-secret",
        "poll_interval": "100ms",
        "idle_poll_interval": "200ms",
        "max_requests_per_second": 100,
    }
    subscription = {
        "name": SUBSCRIPTION,
        "type": "webhook",
        "url": hook_url,
        "secrets": [new_secret()],
        "retry_schedule": ["100ms"],
        "allow_private_networks": True,
    }
    data = {"redis": {"url": redis_url}, "stores": [store], "subscriptions": [subscription]}
    return parse_config(json.dumps({**data, "api": api}), environ={})  # JSON is YAML


@contextlib.asynccontextmanager
async def bridge_with_api(
    server_factory: ServerFactory,
    redis: aioredis.Redis,
    redis_url: str,
    *,
    token: str | None = "let-me-in",
    failing: bool = False,
) -> AsyncIterator[Running]:
    """A running bridge over a simulator and a receiver; yielded once its baseline is done."""
    sim = Simulator(seed=5)
    sim_server = await server_factory(make_app(sim))
    hook = Hook(failing=failing)
    hooks = web.Application()
    hooks.router.add_post("/hook", hook.handle)
    hook_server = await server_factory(hooks)
    port = free_port()
    sim_url = str(sim_server.make_url("")).rstrip("/")
    config = api_config(sim_url, str(hook_server.make_url("/hook")), redis_url, port, token)
    base = f"http://127.0.0.1:{port}"
    async with running(config, redis) as bridge:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(f"{base}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(up, what="the API to listen")
        store = bridge.stores[STORE]
        await eventually(lambda: store.get_meta("baseline:pcm"), what="the baseline")
        yield Running(bridge, sim, hook, base, token)
