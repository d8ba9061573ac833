"""A short poll cycle, on a steady beat: what each cycle reads, and when the next one starts."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from pollkit import FAST, events, make_poller, transitions

from bridge.poller import Poller, PollSettings
from bridge.scan import CycleReport
from bridge.simulator import Simulator, make_app


@pytest.fixture
async def sim_url(aiohttp_server):
    sim = Simulator(seed=13)
    server = await aiohttp_server(make_app(sim))
    return sim, str(server.make_url("")).rstrip("/")


def slow_cycles(poller: Poller, seconds: float) -> list[float]:
    """Replace the poller's cycle by one that takes `seconds`; returns when each one began."""
    starts: list[float] = []

    async def cycle() -> CycleReport:
        starts.append(time.monotonic())
        await asyncio.sleep(seconds)
        return CycleReport("incremental", open_jobs=1)

    poller.cycle = cycle  # type: ignore[method-assign]
    return starts


async def run_for(poller: Poller, seconds: float) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await runner


@pytest.mark.parametrize(("interval", "cycle"), [(0.5, 0.3), (0.1, 0.3)])
async def test_cycles_start_one_interval_apart_whatever_they_take(
    sim_url, redis_client, interval, cycle
):
    _sim, base = sim_url
    settings = PollSettings(poll_interval=interval, idle_poll_interval=interval)
    poller = make_poller(base, redis_client, settings)
    starts = slow_cycles(poller, cycle)
    try:
        await run_for(poller, 1.7)
    finally:
        await poller.client.close()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 2
    # Start to start: the period is the interval (or the cycle, when it is longer), never
    # the sum of both (0.8 s and 0.4 s here).
    period = max(interval, cycle)
    assert all(period - 0.02 <= gap < period + 0.15 for gap in gaps), gaps


async def test_a_job_created_mid_cycle_does_not_make_it_read_every_page(sim_url, redis_client):
    sim, base = sim_url
    for _ in range(450):
        sim.create_job(status="success")
    moving = sim.create_job(status="started")
    poller = make_poller(base, redis_client)
    list_pages = poller.client.list_pcm_jobs
    created: list[str] = []

    async def list_and_meanwhile_create(offset: int = 0, limit: int = 100):
        page = await list_pages(offset, limit)
        if offset == 0 and not created:
            created.append(sim.create_job(status="pending"))  # lands above the page just read
        return page

    try:
        await poller.cycle()  # baseline
        sim.set_status(moving, "success")
        poller.client.list_pcm_jobs = list_and_meanwhile_create  # type: ignore[method-assign]
        report = await poller.cycle()
        # Page 0 held a change, so page 1 is read; it holds none, and the new job is above.
        assert report.pages == 2, report
        assert (await poller.cycle()).emitted == 1
        assert await transitions(poller.store) == [
            (moving, "started", "success"),
            (created[0], None, "pending"),
        ]
    finally:
        await poller.client.close()


async def test_a_job_created_during_the_baseline_needs_no_second_pass(sim_url, redis_client):
    sim, base = sim_url
    for _ in range(250):
        sim.create_job(status="success")
    poller = make_poller(base, redis_client)
    list_pages = poller.client.list_pcm_jobs
    created: list[str] = []

    async def list_and_meanwhile_create(offset: int = 0, limit: int = 100):
        page = await list_pages(offset, limit)
        if offset == 0 and not created:
            created.append(sim.create_job(status="pending"))
        return page

    poller.client.list_pcm_jobs = list_and_meanwhile_create  # type: ignore[method-assign]
    try:
        report = await poller.cycle()
        assert report.kind == "baseline" and report.pages == 3
        assert await poller.store.get_meta("baseline:pcm") is not None  # one pass was enough
        await poller.cycle()
        # Created after the baseline began: a new job, announced.
        assert await transitions(poller.store) == [(created[0], None, "pending")]
    finally:
        await poller.client.close()


async def test_open_jobs_in_a_cluster_are_read_by_page_not_one_by_one(sim_url, redis_client):
    sim, base = sim_url
    for _ in range(450):
        sim.create_job(status="success")
    fanned_out = [sim.create_job(status="started") for _ in range(250)]
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()  # baseline
        report = await poller.cycle()
        # Three pages hold the 250 open jobs: 3 requests, not 1 + 150.
        assert (report.pages, report.fetched_open, report.requests) == (3, 0, 3)
        for job_id in fanned_out:
            sim.set_status(job_id, "success")
        report = await poller.cycle()
        assert report.emitted == 250 and report.fetched_open == 0 and report.open_jobs == 0
        assert report.requests == 4  # the three pages of changes, and one without
    finally:
        await poller.client.close()


async def test_a_failed_job_does_not_hold_back_the_other_events_of_its_page(sim_url, redis_client):
    sim, base = sim_url
    done = sim.create_job(status="started")
    failing = sim.create_job(status="started")  # newer: listed first
    poller = make_poller(base, redis_client, FAST)
    try:
        await poller.cycle()  # baseline
        sim.add_errors(failing, ["row 1: slug must be URL compatible."])
        sim.set_status(failing, "failed")
        sim.set_status(done, "success")
        await poller.cycle()
        outbox = await events(poller.store)
        # The success went out before the failed job's /errors request was even made.
        assert [(e["subject"], e["data"]["status"]) for e in outbox] == [
            (done, "success"),
            (failing, "failed"),
        ]
        assert outbox[1]["data"]["errors"] == [{"message": "row 1: slug must be URL compatible."}]
    finally:
        await poller.client.close()
