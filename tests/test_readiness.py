"""/readyz: ready while Redis answers and every loop runs; 503 with the reasons otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

from apikit import bridge_with_api
from helpers import eventually, free_port

from bridge.app import open_redis
from bridge.poller import Poller


class Proxy:
    """A TCP proxy to Redis that can be cut (every connection closed, the port refused)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self.writers.discard(writer)


class Crash(BaseException):
    """Not an Exception: it escapes every `except Exception` of the bridge, as a bug might."""


async def test_not_ready_while_a_loop_is_dead(aiohttp_server, redis_client, redis_url, monkeypatch):
    cycle = Poller.cycle
    armed: list[Crash] = []

    async def cycle_that_may_crash(self: Poller) -> Any:
        if armed:
            raise armed.pop()
        return await cycle(self)

    monkeypatch.setattr(Poller, "cycle", cycle_that_may_crash)
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        status, body = await running.get("/readyz", headers={"authorization": ""})
        assert status == 200 and body["status"] == "ready" and body["reasons"] == []
        names = {loop["name"] for loop in body["loops"]}
        assert {"poller:console-store:pcm", "dispatcher", "lane:ops-hook:consume"} <= names

        running.bridge.supervisor.backoff_first = 2.0  # dead for two seconds, then restarted
        armed.append(Crash("cycle blew up"))
        await eventually(lambda: _answers(running, 503), what="not ready")
        status, body = await running.get("/readyz")
        assert body["status"] == "not ready"
        assert body["reasons"] == [
            "loop poller:console-store:pcm is not running: Crash: cycle blew up"
        ]
        # The console reads the same answer from /status, which stays a 200.
        status, body = await running.get("/status")
        assert status == 200 and body["readiness"]["status"] == "not ready"
        await eventually(lambda: _answers(running, 200), what="ready after the restart")


async def test_not_ready_while_redis_is_unreachable(aiohttp_server, redis_client, redis_url):
    parts = urlsplit(redis_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    proxied = open_redis(f"redis://127.0.0.1:{proxy.port}{parts.path}")
    try:
        async with bridge_with_api(aiohttp_server, proxied, redis_url) as running:
            assert (await running.get("/readyz"))[0] == 200
            await proxy.cut()
            status, body = await running.get("/readyz")
            assert status == 503
            assert any(r.startswith("redis unreachable") for r in body["reasons"]), body
            assert (await running.get("/healthz"))[0] == 503
            await proxy.start()  # Redis is back: so is readiness
            await eventually(lambda: _answers(running, 200), what="ready again")
    finally:
        await proxied.aclose()


async def _answers(running, status: int) -> bool:
    return (await running.get("/readyz"))[0] == status
