"""The operator's command line beside a running bridge: tail, send-test, --json, the config
from $JOBS_BRIDGE_CONFIG, tables for a terminal and baseline bars for every store at once."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from pathlib import Path

from conftest import ON_BOTH
from helpers import config_text, eventually, running, start_receiver, webhook
from rich.console import Console

from bridge import progress
from bridge.catalog import Catalog
from bridge.cli import display
from bridge.config import load_config
from bridge.elasticpath import ElasticPathClient
from bridge.poller import Poller, PollSettings
from bridge.simulator import Simulator, make_app
from bridge.status import read_status
from bridge.store import Store


async def jobs_bridge(config: Path, *args: str) -> asyncio.subprocess.Process:
    """`jobs-bridge ARGS` with the config named by $JOBS_BRIDGE_CONFIG only."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "JOBS_BRIDGE_CONFIG": str(config)},
    )  # fmt: skip


async def finished(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def setup(aiohttp_server, tmp_path, redis_url, *, quiet_store=None, **hook_options):
    """The store "ops" on a simulator, and `quiet_store` (if any) on one with no jobs."""
    sim = Simulator()
    server = await aiohttp_server(make_app(sim))
    receiver = await start_receiver(aiohttp_server)
    path = tmp_path / "bridge.yaml"
    hook = webhook("hook", receiver.url, receiver.secret, allow_private_networks=True)
    api_base = str(server.make_url("")).rstrip("/")
    config = json.loads(config_text(redis_url, "ops", api_base, [{**hook, **hook_options}]))
    if quiet_store is not None:
        quiet = str((await aiohttp_server(make_app(Simulator()))).make_url("")).rstrip("/")
        config["stores"].append({**config["stores"][0], "name": quiet_store, "api_base": quiet})
    path.write_text(json.dumps(config))
    return sim, receiver, path


@ON_BOTH
async def test_tail_json_prints_one_line_per_event(aiohttp_server, tmp_path, any_redis):
    """Over two outboxes and an attempt log: on the cluster, three slots on two masters."""
    any_redis.assert_apart(["ops", "shop"])
    redis_client = any_redis.client
    sim, _receiver, path = await setup(
        aiohttp_server, tmp_path, any_redis.config, quiet_store="shop"
    )
    async with running(load_config(path), redis_client):
        await eventually(lambda: redis_client.hget("jb:{ops}:meta", "baseline:pcm"))
        events = await jobs_bridge(path, "tail", "--json")
        outcomes = await jobs_bridge(path, "tail", "-s", "hook", "--json")
        try:
            for process in (events, outcomes):
                await asyncio.wait_for(process.stderr.readline(), 20)  # "following ..."
            job = sim.create_job()
            lines = [json.loads(await asyncio.wait_for(events.stdout.readline(), 20))]
            sim.set_status(job, "started")
            lines.append(json.loads(await asyncio.wait_for(events.stdout.readline(), 20)))
            assert [(e["subject"], e["data"]["status"]) for e in lines] == [
                (job, "pending"),
                (job, "started"),
            ]
            assert lines[0]["type"] == "com.elasticpath.pcm.job.pending"
            # With -s: the same events, and the outcome of each delivery to the subscription.
            seen = []
            while len(seen) < 4:
                seen.append(json.loads(await asyncio.wait_for(outcomes.stdout.readline(), 20)))
            attempts = [line for line in seen if "attempt" in line]
            assert [(a["subscription"], a["ok"]) for a in attempts] == [("hook", 1), ("hook", 1)]
            assert [e["id"] for e in seen if "specversion" in e] == [e["id"] for e in lines]
        finally:
            for process in (events, outcomes):
                process.send_signal(signal.SIGINT)
                code, out, err = await finished(process)
                assert code == 0 and out == "" and "Traceback" not in err, err


async def test_send_test_uses_the_config_and_the_api_catalog(
    aiohttp_server, tmp_path, redis_url, redis_client
):
    _sim, receiver, path = await setup(aiohttp_server, tmp_path, redis_url)
    code, out, err = await finished(await jobs_bridge(path, "send-test", "-s", "hook"))
    assert code == 0, err
    assert out.startswith("hook: test event delivered (HTTP 204) in ")
    [event] = receiver.events  # verified with the subscription's secret
    assert event["type"] == "com.elasticpath.bridge.test"

    entry = webhook("x", "http://127.0.0.1:9/nothing", receiver.secret)
    entry = {**entry, "allow_private_networks": True, "timeout": "2s"}
    await Catalog(redis_client).put("from-api", entry)
    code, out, _err = await finished(await jobs_bridge(path, "send-test", "-s", "from-api"))
    assert code == 1 and out.startswith("from-api: test event FAILED after ")
    code, _out, err = await finished(await jobs_bridge(path, "send-test", "-s", "nobody"))
    assert code == 2 and "no subscription named 'nobody'" in err


async def test_json_listings_name_each_subscription_origin(
    aiohttp_server, tmp_path, redis_url, redis_client
):
    _sim, receiver, path = await setup(aiohttp_server, tmp_path, redis_url)
    await Catalog(redis_client).put("from-api", webhook("x", receiver.url, receiver.secret))
    code, out, err = await finished(await jobs_bridge(path, "subscriptions", "list", "--json"))
    assert code == 0, err
    views = [json.loads(line) for line in out.splitlines()]
    assert [(v["name"], v["origin"]) for v in views] == [("hook", "config"), ("from-api", "api")]
    assert receiver.secret not in out and views[1]["secrets"] == ["***"]

    code, out, err = await finished(await jobs_bridge(path, "status", "--json"))
    assert code == 0, err
    found = json.loads(out)
    assert [s["origin"] for s in found["subscriptions"]] == ["config", "api"]
    assert found["pollers"][0]["store"] == "ops"

    code, out, _err = await finished(await jobs_bridge(path, "subscriptions", "list"))
    assert code == 0 and out.splitlines()[1].startswith("from-api ")
    code, out, _err = await finished(await jobs_bridge(path, "subscriptions", "enable", "from-api"))
    assert code == 0 and out == "from-api enabled.\n"


async def test_terminal_tables_show_origins(tmp_path, redis_url, redis_client):
    path = tmp_path / "bridge.yaml"
    hook = webhook("hook", "https://example.com/hook", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    path.write_text(config_text(redis_url, "ops", "https://example.com", [hook]))
    view = await read_status(redis_client, load_config(path))
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    display.show(*display.status_tables(view, {"hook": "config"}), console=console)
    text = console.file.getvalue()
    assert "NOT DONE" in text and "origin" in text and "config" in text and "hook" in text


def test_baseline_bars_show_every_store_at_once():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    relogged = []
    bars = display.BaselineBars(lambda: relogged.append(1), console=console)
    unlisten = progress.listen(bars)
    try:
        progress.report("one/pcm", 100, 300)
        progress.report("two/pcm", 50, None)
        progress.report("one/pcm", 300, 300, finished=True)
        assert relogged == [1]  # the bars started, and the logger writes above them
        progress.report("two/pcm", 70, None, finished=True)
    finally:
        unlisten()
    assert relogged == [1, 1]  # all done: the bars are gone, the logger writes as before
    text = console.file.getvalue()
    assert "one/pcm" in text and "300/300" in text and "two/pcm" in text and "70/70" in text
    assert not progress.report("one/pcm", 1, 1)  # nobody listens any more


async def test_pollers_report_baseline_progress_to_listeners(aiohttp_server, redis_client):
    sim = Simulator(seed=3)
    base = str((await aiohttp_server(make_app(sim))).make_url("")).rstrip("/")
    for _ in range(25):
        sim.create_job(status="success")
    reports: list[tuple[str, int, int | None, bool]] = []
    unlisten = progress.listen(lambda *report: reports.append(report))
    settings = PollSettings(page_limit=10)
    pollers = []
    try:
        for store in ("one", "two"):
            client = ElasticPathClient(base, "sim-client", "sim-secret", max_requests_per_second=99)
            pollers.append(Poller(client, Store(redis_client, store), "pcm", settings))
        await asyncio.gather(*(poller.cycle() for poller in pollers))
    finally:
        unlisten()
        for poller in pollers:
            await poller.client.close()
    for store in ("one", "two"):
        mine = [(done, total, end) for name, done, total, end in reports if name == f"{store}/pcm"]
        assert mine == [(10, 25, False), (20, 25, False), (25, 25, False), (25, 25, True)]
