"""Dispatcher, webhook sink and operator CLI end to end: retries, dead letters, health, recovery."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import ON_BOTH, RedisTarget
from helpers import OTHER_STORE, config_text, eventually, new_secret, running, webhook
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import bridge.deliveries
from bridge.app import Bridge
from bridge.config import BridgeConfig, parse_config
from bridge.deliveries import Deliveries
from bridge.dispatcher import RETRY_AFTER_MAX, Dispatcher, retry_delay
from bridge.events import build_event, event_id
from bridge.jobs import Job, now_iso
from bridge.simulator import Simulator, make_app
from bridge.store import Observation, Store
from bridge.tasks import CANCEL_WAIT

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
STORE = "shop"
# Events go to two stores' outboxes in turn: on the cluster, in two slots on two masters.
STORES = (STORE, OTHER_STORE)
SUB = "hook"
REPO = Path(__file__).resolve().parent.parent


SECRET = new_secret()


@dataclass
class Hit:
    """One request the receiver got."""

    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any] | None  # None: the signature did not verify
    status: int | None = None  # what the receiver answered; None while it hangs


Respond = Callable[[Hit], Awaitable[web.StreamResponse]]


async def accept(_hit: Hit) -> web.StreamResponse:
    return web.Response(status=204)


def always(status: int, **headers: str) -> Respond:
    async def respond(_hit: Hit) -> web.StreamResponse:
        return web.Response(status=status, headers=headers, text="nope")

    return respond


@dataclass
class Receiver:
    """A consumer's endpoint: verifies every signature, then answers with `respond`."""

    secret: str
    respond: Respond = accept
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        try:
            event = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            event = None
        hit = Hit(time.monotonic(), headers, body, event)
        self.hits.append(hit)
        response = web.Response(status=401) if event is None else await self.respond(hit)
        hit.status = response.status
        return response

    def delivered(self) -> set[str]:
        """Ids of events answered with a 2xx."""
        return {h.headers["webhook-id"] for h in self.hits if h.status and 200 <= h.status < 300}

    def hits_for(self, event_id_: str) -> list[Hit]:
        return [h for h in self.hits if h.headers.get("webhook-id") == event_id_]

    @property
    def unverified(self) -> int:
        return sum(1 for h in self.hits if h.event is None)


@dataclass
class World:
    """A simulator (the poller's API, empty), one receiver, and the config that joins them."""

    redis: aioredis.Redis
    redis_url: dict[str, Any]  # the config's `redis` section
    sim_url: str
    receiver: Receiver
    receiver_url: str
    tmp_path: Path

    def config_text(self, *, private: bool = True, **sub: Any) -> str:
        top: dict[str, Any] = {"data_dir": self.tmp_path / "var"}
        if private:
            top["allow_private_networks"] = True
        options = {"retry_schedule": ["100ms", "200ms"], **sub}
        subscription = webhook(SUB, self.receiver_url, SECRET, **options)
        return config_text(self.redis_url, STORES, self.sim_url, [subscription], **top)

    def config(self, **kwargs: Any) -> tuple[BridgeConfig, Path]:
        """The parsed config, and the same written to a file for the CLI."""
        text = self.config_text(**kwargs)
        path = self.tmp_path / "bridge.yaml"
        path.write_text(text)
        return parse_config(text, environ={}), path

    async def emit(self, count: int = 1, job_type: str = "product-import") -> list[str]:
        """Append `count` events (first sightings of new pending jobs) to the outboxes of
        STORES in turn, the first to STORE's."""
        jobs = [new_job(job_type) for _ in range(count)]
        for index, store in enumerate(STORES):
            mine = jobs[index :: len(STORES)]
            outcomes = await Store(self.redis, store).observe(Observation(job) for job in mine)
            assert [o.result for o in outcomes] == ["emitted"] * len(mine)
        return [
            event_id(STORES[index % len(STORES)], "pcm", job.id, "pending")
            for index, job in enumerate(jobs)
        ]


def new_job(job_type: str = "product-import") -> Job:
    now = datetime.now(UTC)
    return Job(
        id=str(uuid.uuid4()),
        source="pcm",
        type=job_type,
        status="pending",
        created_at=now,
        updated_at=now,
    )


async def retry_fence(deliveries: Deliveries, due_in: float) -> None:
    """An explicit fence through the retry schedule: wait until a new event queued for `due_in`
    seconds from now has been attempted and the schedule is empty again.

    The schedule is taken in due order, so a retry due before the fence (one that must not
    happen) has been attempted, and settled or queued again, by then.
    """
    job = new_job("fence")
    fence = build_event(
        id=event_id(STORE, "pcm", job.id, "pending"), store=STORE, source="pcm",
        status="pending", previous_status=None, sequence=1, time=now_iso(), job=job.to_dict(),
    )  # fmt: skip
    await deliveries.enqueue(SUB, [fence], due=time.time() + due_in)

    async def passed() -> bool:
        attempted = await deliveries.attempts_for_event(fence["id"], [SUB])
        return bool(attempted) and await deliveries.retry_count(SUB) == 0

    await eventually(passed, due_in + 10, "the retry fence")


@pytest.fixture
async def world(aiohttp_server: ServerFactory, any_redis: RedisTarget, tmp_path: Path) -> World:
    any_redis.assert_apart(STORES)
    sim_server = await aiohttp_server(make_app(Simulator(seed=7)))
    receiver = Receiver(SECRET)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    hook_server = await aiohttp_server(app)
    return World(
        any_redis.client,
        any_redis.config,
        str(sim_server.make_url("")).rstrip("/"),
        receiver,
        str(hook_server.make_url("/hook")),
        tmp_path,
    )


async def jobs_bridge(*args: str | Path) -> str:
    """Run the real CLI (`python -m bridge ...`); its stdout + stderr, exit status checked."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *map(str, args),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    return text


# -- retries -------------------------------------------------------------------------------


@ON_BOTH
async def test_retried_until_the_receiver_recovers(world: World) -> None:
    failures = 2

    async def flaky(hit: Hit) -> web.StreamResponse:
        if len(world.receiver.hits) <= failures:
            return web.Response(status=500, text="database is down")
        return web.Response(status=204)

    world.receiver.respond = flaky
    # Steps of at least 1.04 s (1.3 s - 20 %): webhook-timestamp has one-second resolution.
    config, _ = world.config(retry_schedule=["1300ms"] * 3)
    async with running(config, world.redis):
        [eid] = await world.emit()
        await eventually(lambda: eid in world.receiver.delivered(), 15, "delivery")

    hits = world.receiver.hits_for(eid)
    assert [h.status for h in hits] == [500, 500, 204]
    assert world.receiver.unverified == 0
    assert {h.headers["webhook-id"] for h in hits} == {eid}
    stamps = [int(h.headers["webhook-timestamp"]) for h in hits]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3, stamps
    assert all(h.event == hits[0].event for h in hits)

    deliveries = Deliveries(world.redis)
    log = await deliveries.attempts_for_event(eid, [SUB])
    assert [(a["attempt"], a["ok"], a["status"]) for a in log] == [
        (1, 0, 500),
        (2, 0, 500),
        (3, 1, 204),
    ]
    assert all(a["subscription"] == SUB and a["duration_ms"] > 0 for a in log)
    assert log[0]["reason"] == "receiver answered 500 Internal Server Error"
    assert log[0]["response"] == "database is down"
    assert await deliveries.retry_count() == 0
    assert await deliveries.dead_letters() == []
    health = await deliveries.health(SUB)
    assert health.enabled and health.failing_since is None


@ON_BOTH
async def test_dead_letter_listed_and_replayed_with_the_cli(world: World) -> None:
    world.receiver.respond = always(500)
    config, path = world.config()
    deliveries = Deliveries(world.redis)
    async with running(config, world.redis):
        [eid] = await world.emit()
        [letter] = await eventually(deliveries.dead_letters, 10, "a dead letter")
        assert letter.event_id == eid
        assert letter.subscription == SUB
        assert letter.attempts == 3  # the first try and one per step of [100ms, 200ms]
        assert (
            letter.reason == "gave up after 3 attempts: receiver answered 500 Internal Server Error"
        )
        assert len(world.receiver.hits_for(eid)) == 3

        listing = await jobs_bridge("dlq", "list", "-c", path)
        assert eid in listing
        assert "attempts=3" in listing and "gave up after 3 attempts" in listing
        assert "1 dead letter(s)" in listing
        [line] = (await jobs_bridge("dlq", "list", "-c", path, "--json")).splitlines()
        as_json = json.loads(line)
        assert (as_json["event_id"], as_json["attempts"]) == (eid, 3)
        assert as_json["event"]["id"] == eid

        world.receiver.respond = accept
        replayed = await jobs_bridge("dlq", "replay", "-c", path, "--all")
        assert "1 dead letter(s) queued" in replayed
        await eventually(lambda: eid in world.receiver.delivered(), 10, "the replayed delivery")
        assert "0 dead letter(s)" in await jobs_bridge("dlq", "list", "-c", path)
    assert world.receiver.hits_for(eid)[-1].event == letter.event


async def test_replayed_dead_letter_is_sent_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.deliveries, "LEASE", 0.5)  # make the re-sends show in seconds
    world.receiver.respond = always(500)
    config, _ = world.config(retry_schedule=["100ms"])  # dead-lettered after the second try
    deliveries = Deliveries(world.redis)
    async with running(config, world.redis):
        [eid] = await world.emit()
        letters = await eventually(deliveries.dead_letters, 10, "a dead letter")
        world.receiver.respond = accept
        await deliveries.requeue(letters)
        await eventually(lambda: eid in world.receiver.delivered(), 10, "the replayed delivery")
        sent = len(world.receiver.hits_for(eid))
        await retry_fence(deliveries, due_in=2 * bridge.deliveries.LEASE)  # past two leases
        assert await deliveries.retry_count(SUB) == 0
        assert len(world.receiver.hits_for(eid)) == sent


async def test_a_large_replay_is_not_held_to_one_batch_per_tick(world: World) -> None:
    """Retries come off the schedule a batch (100) at a time; a full batch is followed at once."""
    world.receiver.respond = always(500)
    config, _ = world.config(retry_schedule=["100ms"])
    deliveries = Deliveries(world.redis)
    async with running(config, world.redis):
        ids = await world.emit(450)
        await eventually(lambda: _dead_letters(deliveries, 450), 20, "450 dead letters")
        world.receiver.respond = accept
        await deliveries.requeue(await deliveries.dead_letters())
        # At one batch (100) per 1 s tick, 450 would take 4-5 s.
        await eventually(lambda: world.receiver.delivered() >= set(ids), 3.5, "the replay")
        # the last receipts may be a moment ahead of their bookkeeping
        await eventually(lambda: _no_retries(deliveries), 5, "the retry schedule to empty")


async def _no_retries(deliveries: Deliveries) -> bool:
    return await deliveries.retry_count(SUB) == 0


async def _dead_letters(deliveries: Deliveries, count: int) -> bool:
    return len(await deliveries.dead_letters()) == count


# -- subscription health -------------------------------------------------------------------


@ON_BOTH
async def test_410_disables_then_enable_and_replay_with_the_cli(world: World) -> None:
    world.receiver.respond = always(410)
    config, path = world.config()
    deliveries = Deliveries(world.redis)
    async with running(config, world.redis) as running_bridge:
        [gone] = await world.emit()
        await eventually(deliveries.dead_letters, 10, "the 410 dead letter")
        health = await deliveries.health(SUB)
        assert not health.enabled
        assert health.disabled_reason == "receiver answered 410 Gone"
        assert len(world.receiver.hits_for(gone)) == 1  # at once: no retry of a 410
        listing = await jobs_bridge("subscriptions", "list", "-c", path)
        assert "DISABLED (receiver answered 410 Gone)" in listing

        later = await world.emit(2)
        letters = await eventually(
            lambda: _letters_for(deliveries, later), 10, "disabled-time dead letters"
        )
        assert {d.reason for d in letters} == {"subscription disabled: receiver answered 410 Gone"}
        assert all(d.attempts == 0 for d in letters)
        assert not any(world.receiver.hits_for(e) for e in later)

        world.receiver.respond = accept
        assert f"{SUB} enabled." in await jobs_bridge("subscriptions", "enable", "-c", path, SUB)
        assert "enabled" in await jobs_bridge("subscriptions", "list", "-c", path)
        # A running dispatcher caches health for a moment; events within it are still refused.
        dispatcher = running_bridge.dispatcher
        await eventually(lambda: _sees_enabled(dispatcher), 10, "the dispatcher to see it")
        [resumed] = await world.emit()
        await eventually(lambda: resumed in world.receiver.delivered(), 10, "resumed delivery")

        before = len(world.receiver.hits)
        replay = await jobs_bridge("replay", "-c", path, "--subscription", SUB, "--since", "1h")
        assert f"4 event(s) queued for {SUB}" in replay
        everything = {gone, *later, resumed}
        await eventually(
            lambda: {h.headers["webhook-id"] for h in world.receiver.hits[before:]} >= everything,
            10,
            "the replayed history",
        )
    assert world.receiver.unverified == 0
    assert world.receiver.delivered() == everything


async def _sees_enabled(dispatcher: Dispatcher) -> bool:
    return (await dispatcher.lanes[SUB]._cached_health()).enabled


async def _letters_for(deliveries: Deliveries, ids: list[str]) -> list[Any]:
    letters = [d for d in await deliveries.dead_letters() if d.event_id in ids]
    return letters if len(letters) == len(ids) else []


async def test_sustained_failure_disables_after_disable_after(world: World) -> None:
    world.receiver.respond = always(500)
    config, _ = world.config(
        retry_schedule=["100ms"] * 7,
        disable_after="500ms",
    )
    assert config.subscriptions[0].disable_after == 0.5
    deliveries = Deliveries(world.redis)
    started = time.monotonic()
    async with running(config, world.redis):
        [eid] = await world.emit()
        [letter] = await eventually(deliveries.dead_letters, 10, "the dead letter")
    health = await deliveries.health(SUB)
    assert not health.enabled
    assert health.disabled_reason.startswith("failing since ")
    assert health.disabled_reason.endswith(": receiver answered 500 Internal Server Error")
    assert letter.event_id == eid
    assert letter.reason == health.disabled_reason  # the dead letter says why it stopped
    # Well before the schedule ran out: disabled by time, not by giving up.
    assert 2 <= letter.attempts < 7
    assert time.monotonic() - started < 5


# -- recovery ------------------------------------------------------------------------------


def hang_first_tries(world: World, ids: set[str], release: asyncio.Event) -> None:
    """The first request for each of `ids` hangs until `release`; everything else is 204."""
    hung: set[str] = set()

    async def respond(hit: Hit) -> web.StreamResponse:
        eid = hit.headers["webhook-id"]
        if eid in ids and eid not in hung:
            hung.add(eid)
            await release.wait()
            return web.Response(status=503)
        return web.Response(status=204)

    world.receiver.respond = respond


async def test_cancelled_mid_delivery_then_claimed_by_a_new_bridge(world: World) -> None:
    release = asyncio.Event()
    config, _ = world.config()
    stop = asyncio.Event()
    first_bridge = Bridge(config, world.redis)
    first = asyncio.create_task(first_bridge.run(stop))
    try:
        await asyncio.wait_for(first_bridge.dispatcher.prepared.wait(), 10)
        ids = await world.emit(6)
        hang_first_tries(world, set(ids[:3]), release)
        await eventually(lambda: len(world.receiver.hits) == 6, 10, "six requests in flight/done")
        first.cancel()
        # It ends at once, unless a library swallows the cancellation: then it gives up
        # waiting for that task after CANCEL_WAIT. Before the fix it never ended.
        done, _ = await asyncio.wait({first}, timeout=CANCEL_WAIT + 3)
        assert first in done, "Bridge.run still running after cancel()"
        async with running(config, world.redis, claim_idle=0.5):
            await eventually(lambda: world.receiver.delivered() >= set(ids), 20, "every event")
    finally:
        stop.set()
        release.set()
        await asyncio.wait({first}, timeout=30)


@ON_BOTH
async def test_killed_mid_delivery_then_claimed_by_a_new_bridge(world: World) -> None:
    """A bridge process SIGKILLed with deliveries in flight: a new one claims and sends them."""
    release = asyncio.Event()
    config, path = world.config()
    async with running(config, world.redis):  # its consumer group exists from now on
        pass
    ids = await world.emit(6)  # written while no bridge runs: a backlog
    hang_first_tries(world, set(ids[:3]), release)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "run",
        "-c",
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: len(world.receiver.hits) == 6, 15, "six requests in flight/done")
        assert world.receiver.delivered() == set(ids[3:])
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        async with running(config, world.redis, claim_idle=0.5) as second:
            await eventually(lambda: world.receiver.delivered() >= set(ids), 10, "every event")
            assert second.dispatcher.stats["claimed"] >= 3
    finally:
        release.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Redelivered with the same id; nothing a consumer would take for a new event.
    assert {h.headers["webhook-id"] for h in world.receiver.hits} == set(ids)
    assert world.receiver.unverified == 0


@ON_BOTH
async def test_backlog_delivered_without_exhausting_redis_connections(world: World) -> None:
    config, _ = world.config()
    async with running(config, world.redis):  # its consumer group exists from now on
        pass
    ids = await world.emit(300)  # e.g. written while the bridge was down
    async with running(config, world.redis):
        await eventually(lambda: world.receiver.delivered() >= set(ids), 2, "the backlog")
    assert len(world.receiver.hits) == 300


# -- the address guard and Retry-After ---------------------------------------------------------


async def test_private_address_refused_without_a_retry_loop(world: World) -> None:
    config, _ = world.config(private=False)
    assert not config.subscription_allows_private(config.subscriptions[0])
    deliveries = Deliveries(world.redis)
    async with running(config, world.redis):
        [eid] = await world.emit()
        [letter] = await eventually(deliveries.dead_letters, 10, "the dead letter")
        await retry_fence(deliveries, due_in=0.3)  # a retry would be due before (100ms)
    assert world.receiver.hits == []
    assert letter.event_id == eid
    assert letter.attempts == 1
    assert "127.0.0.1 (loopback)" in letter.reason
    assert "allow_private_networks" in letter.reason
    [attempt] = await deliveries.attempts_for_event(eid, [SUB])
    assert attempt["ok"] == 0 and attempt["status"] == ""
    assert await deliveries.retry_count() == 0


async def test_retry_after_is_honoured(world: World) -> None:
    async def throttled(hit: Hit) -> web.StreamResponse:
        if len(world.receiver.hits) == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.Response(status=204)

    world.receiver.respond = throttled
    config, _ = world.config(retry_schedule=["100ms", "100ms"])
    async with running(config, world.redis):
        [eid] = await world.emit()
        await eventually(lambda: eid in world.receiver.delivered(), 10, "the delivery")
    first, second = world.receiver.hits_for(eid)
    # Without Retry-After the 100ms step would bring it back within the ~1 s retry tick.
    assert 1.9 <= second.at - first.at < 3.5
    log = await Deliveries(world.redis).attempts_for_event(eid, [SUB])
    assert [a["status"] for a in log] == [429, 204]
    at = [datetime.fromisoformat(a["at"].replace("Z", "+00:00")) for a in log]
    assert (at[1] - at[0]).total_seconds() >= 1.9


# -- retry_delay ---------------------------------------------------------------------------


def test_retry_delay_jitter_and_end_of_schedule() -> None:
    schedule = [10.0, 300.0, 1800.0]
    for attempt, step in enumerate(schedule, start=1):
        delays = [retry_delay(schedule, attempt, None) for _ in range(2000)]
        assert all(d is not None and 0.8 * step <= d <= 1.2 * step for d in delays)
        # Really spread over the band, not a constant factor.
        assert min(delays) < 0.85 * step and max(delays) > 1.15 * step  # type: ignore[operator]
    assert retry_delay(schedule, len(schedule) + 1, None) is None
    assert retry_delay(schedule, len(schedule) + 1, 5.0) is None  # Retry-After adds no attempt
    assert retry_delay([], 1, None) is None


def test_retry_delay_honours_retry_after_within_bounds() -> None:
    schedule = [10.0, 20.0]
    assert retry_delay(schedule, 1, 120.0) == 120.0
    # A shorter Retry-After does not make us come back sooner than the schedule.
    assert 8.0 <= retry_delay(schedule, 1, 1.0) <= 12.0  # type: ignore[operator]
    assert retry_delay(schedule, 2, 10 * 86_400.0) == RETRY_AFTER_MAX
    assert retry_delay(schedule, 1, 0.0) is not None
