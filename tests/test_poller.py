"""The poller against the simulator and real Redis: every change once, at a cost of O(changes)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from helpers import eventually
from pollkit import events, make_poller, transitions

from bridge.elasticpath import TransientError
from bridge.poller import PollSettings
from bridge.simulator import Simulator, make_app


@pytest.fixture
async def sim_url(aiohttp_server):
    sim = Simulator(seed=7)
    server = await aiohttp_server(make_app(sim))
    return sim, str(server.make_url("")).rstrip("/")


async def test_baseline_is_silent_then_changes_emit(sim_url, redis_client):
    sim, base = sim_url
    old = [sim.create_job(status="success") for _ in range(30)]
    waiting = sim.create_job(status="pending")
    poller = make_poller(base, redis_client)
    try:
        report = await poller.cycle()
        assert (report.kind, report.jobs, report.emitted) == ("baseline", 31, 0)
        assert await events(poller.store) == []
        # pending -> success between two polls: one event, previous_status pending
        sim.set_status(waiting, "started")
        sim.set_status(waiting, "success")
        fresh = sim.create_job(job_type="product-export", status="pending")
        await poller.cycle()
        assert sorted(await transitions(poller.store)) == sorted(
            [(waiting, "pending", "success"), (fresh, None, "pending")]
        )
        # nothing moves: nothing is emitted, and only the first page is read
        report = await poller.cycle()
        assert (report.emitted, report.pages) == (0, 1)
        assert old[0] not in {s for s, _, _ in await transitions(poller.store)}
    finally:
        await poller.client.close()


async def test_backfill_emit_sends_history(sim_url, redis_client):
    sim, base = sim_url
    for _ in range(3):
        sim.create_job(status="success")
    poller = make_poller(base, redis_client, PollSettings(backfill="emit"))
    try:
        await poller.cycle()
        assert [t[2] for t in await transitions(poller.store)] == ["success"] * 3
    finally:
        await poller.client.close()


async def test_failed_job_carries_its_errors_and_export_its_files(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()
        failing = sim.create_job(job_type="product-import")
        export = sim.create_job(job_type="product-export")
        for job_id in (failing, export):
            sim.set_status(job_id, "started")
        sim.add_errors(failing, [f"row {i}: bad sku" for i in range(130)])
        sim.set_status(failing, "failed")
        sim.set_status(export, "success")
        await poller.cycle()
        by_subject = {e["subject"]: e for e in await events(poller.store)}
        errors = by_subject[failing]["data"]["errors"]
        assert len(errors) == 100  # bounded by errors_limit
        assert errors[0] == {"message": "row 0: bad sku"}
        assert by_subject[export]["data"]["file_locations"]
    finally:
        await poller.client.close()


async def test_open_jobs_beyond_the_first_page_are_fetched_one_by_one(sim_url, redis_client):
    sim, base = sim_url
    stuck = sim.create_job(status="started")  # oldest: far down the newest-first list
    for _ in range(450):
        sim.create_job(status="success")
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()
        sim.set_status(stuck, "success")
        report = await poller.cycle()
        assert (report.pages, report.fetched_open, report.emitted) == (1, 1, 1)
        assert report.requests == 2  # one page + one job, not five pages
        assert await transitions(poller.store) == [(stuck, "started", "success")]
    finally:
        await poller.client.close()


async def test_shuffled_order_still_finds_every_change(sim_url, redis_client):
    """The list order is undocumented: with a fresh shuffle per request, the safety net holds."""
    sim, base = sim_url
    sim.configure(order="shuffled")
    ids = [sim.create_job(status="success") for _ in range(250)]
    late = [sim.create_job(status="pending") for _ in range(10)]
    settings = PollSettings(page_limit=50, full_scan_interval=0.2)
    poller = make_poller(base, redis_client, settings)
    try:
        # One pass over a reshuffled list misses jobs: the baseline repeats until all are known.
        for _ in range(5):
            report = await poller.cycle()
            if await poller.store.get_meta("baseline:pcm"):
                break
        assert report.kind == "baseline" and report.emitted == 0
        assert await poller.store.known_count("pcm") == 260
        for job_id in late:
            sim.set_status(job_id, "started")
            sim.set_status(job_id, "success")
        newcomers = [sim.create_job(status="success") for _ in range(15)]
        for _ in range(3):
            await poller.cycle()

        async def full_rescan() -> bool:
            return (await poller.cycle()).kind == "full"

        await eventually(full_rescan, 10, "the full re-scan")
        seen = Counter((s, st) for s, _p, st in await transitions(poller.store))
        expected = {(j, "success") for j in late + newcomers}
        assert set(seen) == expected
        assert all(n == 1 for n in seen.values())
        assert not set(ids) & {s for s, _ in seen}
    finally:
        await poller.client.close()


async def test_two_pollers_racing_give_each_transition_once(sim_url, redis_url):
    import redis.asyncio as aioredis

    sim, base = sim_url
    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    await clients[0].flushdb()
    pollers = [make_poller(base, c) for c in clients]
    jobs = [sim.create_job(status="pending") for _ in range(60)]
    rng = random.Random(3)
    try:
        await asyncio.gather(*(p.cycle() for p in pollers))
        for _round in range(6):
            for job_id in rng.sample(jobs, 20):
                status = sim.jobs[job_id].status
                following = {"pending": "started", "started": rng.choice(["success", "failed"])}
                if status in following:
                    sim.set_status(job_id, following[status])
            await asyncio.gather(*(p.cycle() for p in pollers))
        found = await transitions(pollers[0].store)
        assert len(found) == len(set(found))
        ids = [e["id"] for e in await events(pollers[0].store)]
        assert len(ids) == len(set(ids))
        # what Redis holds is what the simulator says
        states = await pollers[0].store.states("pcm", jobs)
        assert [s.status for s in states] == [sim.jobs[j].status for j in jobs]
    finally:
        await clients[0].flushdb()
        for p, c in zip(pollers, clients, strict=True):
            await p.client.close()
            await c.aclose()


async def test_killed_between_fetch_and_observe_loses_nothing(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()
        job_id = sim.create_job()
        await poller.cycle()
        sim.set_status(job_id, "started")
        sim.add_errors(job_id, ["boom"])
        sim.set_status(job_id, "failed")
        # The list is read, then /errors hangs: the cycle is killed before it observes.
        sim.set_faults(rate_slow=1.0, slow_seconds=5)
        requests = sum(sim.requests.values())
        task = asyncio.create_task(poller.cycle())
        await eventually(lambda: sum(sim.requests.values()) > requests, 10, "a held request")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await transitions(poller.store) == [(job_id, None, "pending")]
        sim.set_faults(rate_slow=0.0)
        await poller.cycle()
        found = await events(poller.store)
        assert [(e["data"]["previous_status"], e["data"]["status"]) for e in found] == [
            (None, "pending"),
            ("pending", "failed"),
        ]
        assert found[1]["data"]["errors"] == [{"message": "boom"}]
    finally:
        await poller.client.close()


async def test_stalled_is_emitted_once(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client, PollSettings(stall_after=0.2, full_scan_interval=3600))
    try:
        await poller.cycle()
        job_id = sim.create_job()
        await poller.cycle()

        async def stalled() -> bool:
            await poller.cycle()
            return any(t[2] == "stalled" for t in await transitions(poller.store))

        await eventually(stalled, 10, "the stalled event")
        for _ in range(3):
            await poller.cycle()
        statuses = [t[2] for t in await transitions(poller.store)]
        assert statuses == ["pending", "stalled"]
        [stalled] = [e for e in await events(poller.store) if e["data"]["status"] == "stalled"]
        assert stalled["type"] == "com.elasticpath.pcm.job.stalled"
        assert stalled["data"]["previous_status"] == "pending"
        assert stalled["subject"] == job_id
    finally:
        await poller.client.close()


async def test_vanished_job_leaves_the_open_set_quietly(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client, source="v2")
    try:
        await poller.cycle()
        job_id = sim.create_job(source="v2")
        await poller.cycle()
        assert job_id in await poller.store.open_jobs("v2")
        sim.expire(job_id)  # v2 jobs expire after a week: a 404 is normal
        report = await poller.cycle()
        assert report.emitted == 0
        assert await poller.store.open_jobs("v2") == {}
    finally:
        await poller.client.close()


async def test_invalid_record_is_skipped_and_picked_up_once_valid(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()
        job_id = sim.create_job()
        sim.set_faults(rate_invalid_record=1.0)
        report = await poller.cycle()
        assert report.skipped == 1 and poller.stats["parse_errors"] == 1
        assert await transitions(poller.store) == []
        sim.set_faults(rate_invalid_record=0.0)
        await poller.cycle()
        assert await transitions(poller.store) == [(job_id, None, "pending")]
    finally:
        await poller.client.close()


async def test_api_outage_backs_off_without_crash_or_false_events(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client)
    poller.client.max_retries = 1
    stop = asyncio.Event()
    jobs = [sim.create_job() for _ in range(5)]
    try:
        await poller.cycle()
        sim.set_faults(rate_500=0.5, rate_429=0.3, rate_malformed=0.2)
        runner = asyncio.create_task(poller.run(stop))
        for job_id in jobs:
            sim.set_status(job_id, "started")
            await asyncio.sleep(0.05)
            sim.set_status(job_id, "success")
        await eventually(lambda: poller.stats["poll_failures"] >= 1, 10, "a failed poll")
        sim.set_faults(rate_500=0.0, rate_429=0.0, rate_malformed=0.0)

        async def caught_up() -> bool:
            found = await transitions(poller.store)
            return runner.done() or sum(1 for t in found if t[2] == "success") == 5

        await eventually(caught_up, 10, "five successes (or the poller ending)")
        assert not runner.done()  # still running: outages are not fatal
        stop.set()
        await runner
        found = await transitions(poller.store)
        assert len(found) == len(set(found))
        assert {(s, st) for s, _p, st in found if st == "success"} == {(j, "success") for j in jobs}
        assert all(st in {"started", "success"} for _s, _p, st in found)
        assert poller.stats["poll_failures"] >= 1
    finally:
        await poller.client.close()


async def test_transient_error_after_retries_is_raised_by_a_cycle(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client)
    poller.client.max_retries = 1
    sim.set_faults(rate_500=1.0)
    try:
        with pytest.raises(TransientError):
            await poller.cycle()
        assert await redis_client.hget(poller.store.meta_key, "baseline:pcm") is None
    finally:
        await poller.client.close()
