"""Small helpers shared by the tests: waiting for a condition, secrets, free ports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from bridge.app import Bridge
from bridge.config import BridgeConfig


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


def new_secret() -> str:
    """A fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def running(
    config: BridgeConfig, redis: aioredis.Redis, claim_idle: float = 120.0
) -> AsyncIterator[Bridge]:
    """A Bridge running in a task; stopped gracefully at the end (and it must not have died)."""
    stop = asyncio.Event()
    bridge = Bridge(config, redis, claim_idle=claim_idle)
    task = asyncio.create_task(bridge.run(stop))
    try:
        yield bridge
        assert not task.done(), "the bridge stopped by itself"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
