"""Redis loses the bridge's data, and finished jobs' records age out: real Redis, real simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from helpers import eventually
from pollkit import FAST, ago, events, make_poller, named, transitions
from structlog.testing import capture_logs
from test_leases import TTL, Process

from bridge.config import ConfigError, parse_config
from bridge.jobs import parse_job
from bridge.leases import Leases
from bridge.poller import PollSettings
from bridge.simulator import Simulator, make_app
from bridge.store import Observation, Store, parse_state

STORE = "{name: s, api_base: 'https://api.example.com', client_id: i, client_secret: x}"


@pytest.fixture
async def sim_url(aiohttp_server):
    sim = Simulator(seed=11)
    server = await aiohttp_server(make_app(sim))
    return sim, str(server.make_url("")).rstrip("/")


async def test_a_flushed_redis_is_noticed_and_changes_after_the_last_poll_emit(
    sim_url, redis_client
):
    sim, base = sim_url
    quiet = [sim.create_job(status="success", created_at=ago(hours=2)) for _ in range(5)]
    waiting = sim.create_job(status="pending", created_at=ago(minutes=20))
    running = sim.create_job(status="started", created_at=ago(minutes=20))
    finishing = sim.create_job(status="started", created_at=ago(minutes=20))
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()  # baseline: silent
        await poller.cycle()
        assert await events(poller.store) == []
        sim.set_status(finishing, "success")  # after the last poll, before the loss
        await redis_client.flushdb()  # Redis restarted without persistence
        sim.add_errors(running, ["row 3: sku must be unique"])
        sim.set_status(running, "failed")  # after the loss
        fresh = sim.create_job()
        with capture_logs() as logs:
            report = await poller.cycle()
            await poller.cycle()
        [lost] = named(logs, "state_lost")
        assert lost["log_level"] == "error"
        assert lost["store"] == "s" and lost["source"] == "pcm"
        assert lost["last_poll_started_at"] is not None
        assert report.kind == "baseline"
        assert sorted(await transitions(poller.store)) == sorted(
            [(running, None, "failed"), (finishing, None, "success"), (fresh, None, "pending")]
        )
        failed = next(e for e in await events(poller.store) if e["subject"] == running)
        assert failed["sequence"] == "1"
        assert failed["data"]["errors"] == [{"message": "row 3: sku must be unique"}]
        # Every job is recorded again (silently, the unchanged ones), the baseline is done.
        states = await poller.store.states("pcm", [*quiet, waiting, running])
        assert [s.status for s in states] == ["success"] * 5 + ["pending", "failed"]
        assert await poller.store.get_meta("baseline:pcm") is not None
        assert await poller.store.get_meta("recover_after:pcm") is None
        assert poller.stats["state_losses"] == 1
        # Later changes are ordinary ones again.
        sim.set_status(waiting, "started")
        await poller.cycle()
        assert (waiting, "pending", "started") in await transitions(poller.store)
    finally:
        await poller.client.close()


async def test_an_empty_redis_at_start_is_a_first_start(sim_url, redis_client):
    sim, base = sim_url
    for _ in range(3):
        sim.create_job(status="success", created_at=ago(minutes=5))
    recent = sim.create_job(status="failed")  # just now, yet history to a first start
    poller = make_poller(base, redis_client)
    try:
        with capture_logs() as logs:
            report = await poller.cycle()
        assert report.kind == "baseline" and report.emitted == 0
        assert named(logs, "state_lost") == []
        assert await poller.store.states("pcm", [recent]) != [None]
    finally:
        await poller.client.close()


async def test_a_loss_in_the_middle_of_a_cycle_writes_nothing_into_the_empty_redis(redis_client):
    store = Store(redis_client, "s")
    record = {
        "id": "j1",
        "type": "pim-job",
        "attributes": {
            "type": "product-import",
            "status": "failed",
            "created_at": "2024-01-05T13:46:41.695Z",
            "updated_at": "2024-01-05T13:46:41.695Z",
        },
    }
    [outcome] = await store.observe([Observation(parse_job("pcm", record))], marker="baseline:pcm")
    assert outcome.result == "lost"
    assert await redis_client.keys("*") == []


async def test_a_recovery_interrupted_is_resumed_by_the_next_poller(sim_url, redis_client):
    sim, base = sim_url
    running = sim.create_job(status="started", created_at=ago(minutes=20))
    first = make_poller(base, redis_client)
    second = make_poller(base, redis_client)
    try:
        await first.cycle()
        await first.cycle()
        await redis_client.flushdb()
        sim.set_status(running, "success")
        for _ in range(3):
            sim.create_job(status="success", created_at=ago(hours=2))
        # The recovering process dies while its baseline reads the list; a new process, which
        # never saw the state that was lost, takes over.
        sim.set_faults(rate_slow=1.0, slow_seconds=5)
        task = asyncio.create_task(first.cycle())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sim.set_faults(rate_slow=0.0)
        assert await redis_client.hget(first.store.meta_key, "recover_after:pcm") is not None
        await second.cycle()
        assert await transitions(second.store) == [(running, None, "success")]
    finally:
        await first.client.close()
        await second.client.close()


async def test_a_replica_that_did_not_poll_before_the_loss_recovers_when_it_polls_next(
    sim_url, redis_client
):
    """Two processes share the store's lease; the holder dies with Redis's data. The other one
    never polled the store, but followed its state while it waited for the lease: it notices
    the loss and announces what changed, instead of taking the empty Redis for a first start."""
    sim, base = sim_url
    running = sim.create_job(status="started", created_at=ago(minutes=20))
    holder, waiting = (
        Process(Leases(redis_client, name, TTL), [make_poller(base, redis_client)])
        for name in ("first", "second")
    )
    store = waiting.pollers[0].store
    holder.start()
    try:
        await eventually(lambda: redis_client.hget(store.meta_key, "last_poll:pcm"), what="a poll")
        waiting.start()
        # Waiting for the lease, the second process reads the state every ttl/3.
        watch = waiting.pollers[0]._watch
        await eventually(lambda: watch.baseline_seen, timeout=TTL, what="the state followed")
        assert waiting.holding() == set()
        await holder.crash()  # kill -9 ...
        await redis_client.flushdb()  # ... and Redis restarted without persistence
        sim.add_errors(running, ["row 3: sku must be unique"])
        sim.set_status(running, "failed")
        fresh = sim.create_job()
        expected = sorted([(running, None, "failed"), (fresh, None, "pending")])
        with capture_logs() as logs:

            async def recovered() -> bool:
                return sorted(await transitions(store)) == expected

            await eventually(recovered, timeout=3 * TTL, what="the recovery's events")
        assert waiting.holding() == {"s"}
        [lost] = named(logs, "state_lost")
        assert lost["last_poll_started_at"] is not None
    finally:
        await waiting.finish()
        for process in (holder, waiting):
            await process.pollers[0].client.close()


async def test_finished_jobs_records_are_forgotten_after_retention(sim_url, redis_client):
    sim, base = sim_url
    old = [sim.create_job(status="success", created_at=ago(minutes=20)) for _ in range(4)]
    recent = sim.create_job(status="success", created_at=ago(seconds=30))
    still_open = sim.create_job(status="pending", created_at=ago(minutes=20))
    settings = dataclasses.replace(FAST, finished_job_retention=300, full_scan_interval=0)
    poller = make_poller(base, redis_client, settings)
    try:
        await poller.cycle()  # baseline records everything
        assert await redis_client.hlen(poller.store.jobs_key) == 6
        with capture_logs() as logs:
            report = await poller.cycle()  # a full scan, then the sweep
        assert poller.stats["jobs_forgotten"] == 4
        assert named(logs, "finished_jobs_forgotten")[0]["jobs"] == 4
        left = await poller.store.states("pcm", [*old, recent, still_open])
        assert [s.status if s else None for s in left] == [None] * 4 + ["success", "pending"]
        assert left[4].finished_minute is not None  # "success||0|<minute>"
        # The API still lists the forgotten jobs: history, neither an event nor a record again.
        report = await poller.cycle()
        assert report.kind == "full" and report.history == 4 and report.emitted == 0
        assert await redis_client.hlen(poller.store.jobs_key) == 2
        # So is a finished job the bridge never saw whose last activity is that old.
        sim.create_job(status="failed", created_at=ago(hours=2))
        report = await poller.cycle()
        assert report.history == 5 and await events(poller.store) == []
    finally:
        await poller.client.close()


async def test_the_sweep_stamps_records_written_before_they_carried_their_minute(redis_client):
    store = Store(redis_client, "s")
    await redis_client.hset(
        store.jobs_key,
        mapping={"pcm:legacy": "success|1704462402695000|2|0", "pcm:open": "started|1|1|0"},
    )
    assert await store.forget_finished("pcm", time.time() - 3600) == 0
    legacy = parse_state(await redis_client.hget(store.jobs_key, "pcm:legacy"))
    assert legacy is not None and legacy.sequence == 2
    assert legacy.finished_minute == int(time.time() // 60)
    assert await redis_client.hget(store.jobs_key, "pcm:open") == "started|1|1|0"
    assert await store.forget_finished("pcm", time.time() + 120) == 1
    assert await redis_client.hkeys(store.jobs_key) == ["pcm:open"]


@pytest.mark.parametrize(
    ("text", "seconds"), [(None, 30 * 86400), ("1h", 3600), ("90d", 90 * 86400)]
)
def test_finished_job_retention_is_configured_and_at_least_an_hour(text, seconds) -> None:
    line = f"finished_job_retention: {text}\n" if text else ""
    config = parse_config(f"{line}stores: [{STORE}]", environ={})
    assert config.finished_job_retention == seconds
    settings = PollSettings.from_config(
        config.stores[0], finished_job_retention=config.finished_job_retention
    )
    assert settings.finished_job_retention == seconds


def test_a_retention_under_an_hour_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"finished_job_retention: 1ms\nstores: [{STORE}]", environ={})
    assert caught.value.problems == ["finished_job_retention: must be at least 1h (got 1ms)"]
