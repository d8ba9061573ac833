"""SIGHUP reload of a running bridge: stores and subscriptions added, changed and removed take
effect at once; an invalid file changes nothing and says why."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import config_text, eventually, running, start_receiver, webhook
from structlog.testing import capture_logs
from test_cli import start_process, wait_for_line

from bridge.config import load_config
from bridge.simulator import Simulator, make_app


class ConfigFile:
    """A config file on disk, rewritten by the test as an operator would."""

    def __init__(self, path: Path, redis_url: str, api_base: str) -> None:
        self.path, self.redis_url, self.api_base = path, redis_url, api_base

    def write(self, subscriptions: list[dict[str, Any]], stores: Sequence[str] = ("one",)) -> Path:
        data = json.loads(config_text(self.redis_url, stores[0], self.api_base, subscriptions))
        data["stores"] += [{**data["stores"][0], "name": name} for name in stores[1:]]
        self.path.write_text(json.dumps(data))
        return self.path


async def start_sim(aiohttp_server) -> tuple[Simulator, str]:
    sim = Simulator()
    server = await aiohttp_server(make_app(sim))
    return sim, str(server.make_url("")).rstrip("/")


def hook(name: str, receiver: Any, **options: Any) -> dict[str, Any]:
    return webhook(name, receiver.url, receiver.secret, allow_private_networks=True, **options)


async def test_reload_adds_changes_and_removes_subscriptions(
    aiohttp_server, tmp_path, redis_url, redis_client
):
    sim, api_base = await start_sim(aiohttp_server)
    a, b, c = [await start_receiver(aiohttp_server) for _ in range(3)]
    file = ConfigFile(tmp_path / "bridge.yaml", redis_url, api_base)
    path = file.write([hook("a", a), hook("b", b)])
    async with running(load_config(path), redis_client, config_path=path) as bridge:
        await eventually(lambda: redis_client.hget("jb:{one}:meta", "baseline:pcm"))
        job = sim.create_job()
        await eventually(lambda: (job, "pending") in a.received and (job, "pending") in b.received)

        file.write([hook("a", c), hook("c", c, filter={"statuses": ["started"]})])
        with capture_logs() as logs:
            assert await bridge.live.reload()
        [reloaded] = [entry for entry in logs if entry["event"] == "config_reloaded"]
        assert reloaded["subscriptions_added"] == ["c"]
        assert reloaded["subscriptions_removed"] == ["b"]
        assert reloaded["subscriptions_changed"] == ["a"]
        assert reloaded["stores_added"] == reloaded["stores_changed"] == []
        assert reloaded["restart_needed"] == []

        sim.set_status(job, "started")
        await eventually(lambda: sum(e["data"]["status"] == "started" for e in c.events) == 2)
        assert (job, "started") not in a.received
        assert (job, "started") not in b.received


async def test_reload_starts_and_stops_the_pollers_of_stores(
    aiohttp_server, tmp_path, redis_url, redis_client
):
    sim, api_base = await start_sim(aiohttp_server)
    receiver = await start_receiver(aiohttp_server)
    file = ConfigFile(tmp_path / "bridge.yaml", redis_url, api_base)
    path = file.write([hook("all", receiver, filter={"stores": ["one"]})])
    async with running(load_config(path), redis_client, config_path=path) as bridge:
        await eventually(lambda: redis_client.hget("jb:{one}:meta", "baseline:pcm"))
        file.write([hook("all", receiver, filter={"stores": ["two"]})], stores=["two"])
        assert await bridge.live.reload()
        assert list(bridge.stores) == ["two"] and [p.store.name for p in bridge.pollers] == ["two"]
        loops = {state.name: state.alive for state in bridge.supervisor.states()}
        assert loops["poller:two:pcm"] and "poller:one:pcm" not in loops
        await eventually(lambda: redis_client.hget("jb:{two}:meta", "baseline:pcm"))
        job = sim.create_job()
        await eventually(lambda: (job, "pending") in receiver.received, what="store two's event")
        assert [e["data"]["store"] for e in receiver.events] == ["two"]
        # Store one is no longer polled: its outbox keeps what it had, and gets nothing new.
        assert await redis_client.xlen("jb:{one}:events") == 0


async def test_an_invalid_file_changes_nothing(aiohttp_server, tmp_path, redis_url, redis_client):
    sim, api_base = await start_sim(aiohttp_server)
    receiver = await start_receiver(aiohttp_server)
    file = ConfigFile(tmp_path / "bridge.yaml", redis_url, api_base)
    path = file.write([hook("kept", receiver)])
    async with running(load_config(path), redis_client, config_path=path) as bridge:
        await eventually(lambda: redis_client.hget("jb:{one}:meta", "baseline:pcm"))
        before = (dict(bridge.dispatcher.subscriptions), list(bridge.stores))
        path.write_text(
            path.read_text().replace('"kept"', '"bad name"').replace("http://", "ftp://")
        )
        with capture_logs() as logs:
            assert not await bridge.live.reload()
        [failed] = [entry for entry in logs if entry["event"] == "config_reload_failed"]
        assert any(p.startswith("subscriptions[0].name") for p in failed["problems"])
        assert any(p.startswith("subscriptions[0].url") for p in failed["problems"])
        assert (dict(bridge.dispatcher.subscriptions), list(bridge.stores)) == before
        job = sim.create_job()
        await eventually(lambda: (job, "pending") in receiver.received)


async def test_sighup_reloads_a_running_process(aiohttp_server, tmp_path, redis_url, redis_client):
    sim, api_base = await start_sim(aiohttp_server)
    first, second = await start_receiver(aiohttp_server), await start_receiver(aiohttp_server)
    file = ConfigFile(tmp_path / "bridge.yaml", redis_url, api_base)
    path = file.write([hook("first", first)])
    process = await start_process("--json-logs", "run", "-c", str(path))
    try:
        await wait_for_line(process.stdout, "baseline_completed")
        file.write([hook("first", first), hook("second", second)])
        process.send_signal(signal.SIGHUP)
        line = await wait_for_line(process.stdout, "config_reloaded")
        assert json.loads(line)["subscriptions_added"] == ["second"]
        job = sim.create_job()
        await eventually(lambda: (job, "pending") in second.received, what="the new subscription")

        path.write_text("stores: []\n")
        process.send_signal(signal.SIGHUP)
        line = await wait_for_line(process.stdout, "config_reload_failed")
        assert json.loads(line)["problems"] == ["stores: must not be empty"]
        sim.set_status(job, "started")
        await eventually(lambda: (job, "started") in second.received, what="the kept config")
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, err.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
