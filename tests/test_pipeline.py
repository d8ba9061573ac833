"""End to end: the simulated Elastic Path API -> the bridge -> signed webhooks at real receivers."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import ON_BOTH, RedisTarget
from helpers import eventually, make_config, new_secret, running, webhook
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bridge.config import BridgeConfig
from bridge.simulator import Simulator, make_app
from bridge.store import Store

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
STORE = "us-main"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TERMINAL = ("success", "failed", "cancelled")


SECRET, SECOND_SECRET, STRANGER_SECRET = new_secret(), new_secret(), new_secret()


@dataclass
class Receiver:
    """A consumer's endpoint: answers 204 to what verifies with its secret, 401 otherwise."""

    secret: str
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    rejected: int = 0
    # (webhook-id header, event id) of every request where they differ: a handler that
    # asserted would only answer 500, so the tests assert on this instead.
    mismatched_ids: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append((headers, body))
        try:
            event = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=401)
        if headers["webhook-id"] != event["id"]:
            self.mismatched_ids.append((headers["webhook-id"], event["id"]))
        self.events.append(event)
        return web.Response(status=204)

    def pairs(self) -> set[tuple[str, str]]:
        """(subject, status) of every event received."""
        return {(e["subject"], e["data"]["status"]) for e in self.events}

    def of(self, subject: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["subject"] == subject]


@dataclass
class Pipeline:
    """The simulator serving its fake API, receivers, Redis, and a config joining them."""

    sim: Simulator
    sim_url: str
    redis: aioredis.Redis
    redis_url: dict[str, Any]  # the config's `redis` section
    server_factory: ServerFactory
    api_statuses: Counter[int]  # every status the fake API answered
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = Store(self.redis, STORE)

    async def receiver(self, secret: str = SECRET) -> Receiver:
        receiver = Receiver(secret)
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        server = await self.server_factory(app)
        receiver.url = str(server.make_url("/hook"))
        return receiver

    def config(
        self, subscriptions: dict[str, tuple[Receiver, dict[str, Any]]], **store: Any
    ) -> BridgeConfig:
        """A config for the store and one webhook subscription per (receiver, options) entry."""
        return make_config(
            self.redis_url,
            STORE,
            self.sim_url,
            [
                webhook(name, receiver.url, SECRET, retry_schedule=["100ms", "200ms"], **options)
                for name, (receiver, options) in subscriptions.items()
            ],
            store_options=store,
            allow_private_networks=True,  # the receivers are on 127.0.0.1
        )

    async def baseline_done(self, *sources: str) -> None:
        for source in sources or ("pcm",):
            await eventually(
                lambda s=source: self.store.get_meta(f"baseline:{s}"), 10, f"{source} baseline"
            )

    async def observed(self, job_ids: Iterable[str], timeout: float = 10.0) -> None:
        """Wait until the bridge has recorded every job in its current simulator status."""
        job_ids = list(job_ids)

        async def caught_up() -> bool:
            for job_id in job_ids:
                job = self.sim.jobs[job_id]
                [state] = await self.store.states(job.source, [job_id])
                if state is None or state.status != job.status:
                    return False
            return True

        await eventually(caught_up, timeout, f"the bridge to observe {len(job_ids)} job(s)")

    async def move(self, changes: dict[str, str], timeout: float = 10.0) -> None:
        """Set each job's status in the simulator, then wait until the bridge observed it."""
        for job_id, status in changes.items():
            self.sim.set_status(job_id, status)
        await self.observed(changes, timeout)

    async def dispatched(self, timeout: float = 10.0) -> None:
        """Wait until every subscription has read and acknowledged every outbox entry."""

        async def drained() -> bool:
            last = await self.redis.xrevrange(self.store.events_key, count=1)
            if not last:
                return True
            groups = await self.redis.xinfo_groups(self.store.events_key)
            return bool(groups) and all(  # one consumer group per subscription
                g["last-delivered-id"] == last[0][0] and g["pending"] == 0 for g in groups
            )

        await eventually(drained, timeout, "the outbox to be dispatched")


@pytest.fixture
async def pipe(aiohttp_server: ServerFactory, any_redis: RedisTarget) -> Pipeline:
    sim = Simulator(seed=11)
    statuses: Counter[int] = Counter()

    @web.middleware
    async def count_statuses(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        statuses[response.status] += 1
        return response

    app = make_app(sim)
    app.middlewares.insert(0, count_statuses)  # outermost: sees the injected faults too
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    return Pipeline(sim, base, any_redis.client, any_redis.config, aiohttp_server, statuses)


def iso_ms(ns: int | None) -> str | None:
    """What the bridge must make of a simulator timestamp: UTC, milliseconds, `Z`."""
    if ns is None:
        return None
    moment = datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def api_timestamps(sim: Simulator, job_id: str) -> dict[str, str | None]:
    """The job's timestamps as the API gives them now, in the event's normalised form."""
    job = sim.jobs[job_id]
    if job.source == "v2":
        return {
            "created_at": iso_ms(job.created_ns),
            "started_at": None,
            "completed_at": None,
            "updated_at": iso_ms(job.updated_ns),
        }
    return {
        "created_at": iso_ms(job.created_ns),
        "started_at": iso_ms(job.started_ns),
        "completed_at": iso_ms(job.completed_ns),
        "updated_at": iso_ms(job.updated_ns),
    }


# -- every transition, as a CloudEvent -----------------------------------------------------


def assert_cloudevents(
    sim: Simulator,
    job_id: str,
    walk: list[str],
    events: list[dict[str, Any]],
    snapshots: dict[tuple[str, str], dict[str, str | None]],
) -> None:
    """The events of one job: one per status of its walk, each a complete CloudEvent."""
    events = sorted(events, key=lambda e: int(e["sequence"]))
    source = sim.jobs[job_id].source
    for sequence, (event, status) in enumerate(zip(events, walk, strict=True), start=1):
        previous = walk[sequence - 2] if sequence > 1 else None
        assert set(event) == {
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "sequence",
            "data",
        }
        assert event["specversion"] == "1.0"
        assert event["source"] == f"/stores/{STORE}/{source}/jobs"
        assert event["type"] == f"com.elasticpath.{source}.job.{status}"
        assert event["subject"] == job_id
        assert event["datacontenttype"] == "application/json"
        assert event["sequence"] == str(sequence)
        assert ISO_MS.fullmatch(event["time"]), event["time"]
        observed_at = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - observed_at).total_seconds()) < 60
        data = event["data"]
        assert data["store"] == STORE
        assert data["source"] == source
        assert data["status"] == status
        assert data["previous_status"] == previous
        job = data["job"]
        assert job["id"] == job_id
        assert job["status"] == status
        assert job["type"] == sim.jobs[job_id].type
        stamps = {key: job[key] for key in snapshots[(job_id, status)]}
        assert stamps == snapshots[(job_id, status)], (job_id, status)
        assert all(v is None or ISO_MS.fullmatch(v) for v in stamps.values())
        assert ("errors" in data) == (status == "failed")


@ON_BOTH
async def test_each_transition_delivered_as_a_cloudevent(pipe: Pipeline) -> None:
    sim = pipe.sim
    sim.bulk_create(5)  # history before the bridge: recorded silently by the baseline
    sim.bulk_create(2, source="v2")
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})}, sources=["pcm", "v2"])
    snapshots: dict[tuple[str, str], dict[str, str | None]] = {}

    async def step(changes: dict[str, str]) -> None:
        await pipe.move(changes)
        snapshots.update({(j, s): api_timestamps(sim, j) for j, s in changes.items()})

    async with running(config, pipe.redis):
        await pipe.baseline_done("pcm", "v2")
        ok = sim.create_job("pcm", "product-import")
        failed = sim.create_job("pcm", "product-import", meta={"file": "catalogue été.csv"})
        cancelled = sim.create_job("pcm", "price-import")
        export = sim.create_job("v2", "order_export")
        new = [ok, failed, cancelled, export]
        await pipe.observed(new)
        snapshots.update({(j, "pending"): api_timestamps(sim, j) for j in new})
        await step({ok: "started", failed: "started", export: "started"})
        sim.add_errors(failed, ["row 3: price is not a number", "slug must be URL compatible."])
        await step({ok: "success", failed: "failed", cancelled: "cancelled", export: "success"})
        await pipe.dispatched()

    walks = {
        ok: ["pending", "started", "success"],
        failed: ["pending", "started", "failed"],
        cancelled: ["pending", "cancelled"],
        export: ["pending", "started", "success"],
    }
    expected = {(job_id, status) for job_id, walk in walks.items() for status in walk}
    assert receiver.pairs() == expected
    assert receiver.rejected == 0
    assert receiver.mismatched_ids == []
    assert len(receiver.events) == len({e["id"] for e in receiver.events}) == len(expected)

    for job_id, walk in walks.items():
        assert_cloudevents(sim, job_id, walk, receiver.of(job_id), snapshots)

    [failure] = [e for e in receiver.of(failed) if e["data"]["status"] == "failed"]
    assert failure["data"]["errors"] == [
        {"message": "row 3: price is not a number"},
        {"message": "slug must be URL compatible."},
    ]
    assert failure["data"]["job"]["meta"]["file"] == "catalogue été.csv"
    v2_events = receiver.of(export)
    assert {e["data"]["job"]["type"] for e in v2_events} == {"order_export"}
    [v2_pending] = [e for e in v2_events if e["data"]["status"] == "pending"]
    assert v2_pending["data"]["job"]["updated_at"] is None  # Go's zero time is no time
    [v2_done] = [e for e in v2_events if e["data"]["status"] == "success"]
    assert v2_done["data"]["file_locations"] == [sim.jobs[export].href]


# -- routing and signatures ----------------------------------------------------------------


@ON_BOTH
async def test_filters_route_each_subscription_its_events(pipe: Pipeline) -> None:
    sim = pipe.sim
    failures, exports, everything = (
        await pipe.receiver(),
        await pipe.receiver(),
        await pipe.receiver(),
    )
    config = pipe.config(
        {
            "failures": (failures, {"filter": {"statuses": ["failed"]}}),
            "exports": (exports, {"filter": {"job_types": ["product-export"]}}),
            "everything": (everything, {}),
        }
    )
    async with running(config, pipe.redis):
        await pipe.baseline_done()
        export_ok = sim.create_job("pcm", "product-export")
        export_failed = sim.create_job("pcm", "product-export")
        import_failed = sim.create_job("pcm", "product-import")
        import_ok = sim.create_job("pcm", "product-import")
        jobs = [export_ok, export_failed, import_failed, import_ok]
        await pipe.observed(jobs)
        await pipe.move(dict.fromkeys(jobs, "started"))
        await pipe.move(
            {
                export_ok: "success",
                export_failed: "failed",
                import_failed: "failed",
                import_ok: "success",
            }
        )
        await pipe.dispatched()

    assert failures.pairs() == {(export_failed, "failed"), (import_failed, "failed")}
    assert len(failures.events) == 2
    assert exports.pairs() == {
        (job_id, status)
        for job_id, end in ((export_ok, "success"), (export_failed, "failed"))
        for status in ("pending", "started", end)
    }
    assert len(exports.events) == 6
    assert len(everything.events) == 12
    assert failures.mismatched_ids == exports.mismatched_ids == everything.mismatched_ids == []
    exported = next(e for e in exports.of(export_ok) if e["data"]["status"] == "success")
    assert exported["data"]["file_locations"] == sim.jobs[export_ok].meta["file_locations"]


async def test_either_rotated_secret_verifies(pipe: Pipeline) -> None:
    knows_first = await pipe.receiver(SECRET)
    knows_second = await pipe.receiver(SECOND_SECRET)
    both = {"secrets": [SECRET, SECOND_SECRET]}
    config = pipe.config({"first": (knows_first, both), "second": (knows_second, both)})
    async with running(config, pipe.redis):
        await pipe.baseline_done()
        job_id = pipe.sim.create_job("pcm", "product-import")
        await pipe.observed([job_id])
        await pipe.dispatched()

    for receiver in (knows_first, knows_second):
        assert receiver.rejected == 0
        assert receiver.mismatched_ids == []
        assert receiver.pairs() == {(job_id, "pending")}
        [(headers, body)] = receiver.requests
        assert len(headers["webhook-signature"].split(" ")) == 2
        with pytest.raises(WebhookVerificationError):
            Webhook(STRANGER_SECRET).verify(body, headers)
    assert knows_first.events == knows_second.events


# -- the API misbehaving -------------------------------------------------------------------


async def test_shuffled_list_order_loses_no_change(pipe: Pipeline) -> None:
    sim = pipe.sim
    sim.configure(order="shuffled")
    sim.bulk_create(250)  # history spread over every page
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})}, page_limit=50, full_scan_interval="1s")
    async with running(config, pipe.redis):
        await pipe.baseline_done()
        live = [sim.create_job("pcm", "product-import") for _ in range(50)]
        await pipe.observed(live)
        cancelled, walked = live[:10], live[10:]
        await pipe.move(
            {**dict.fromkeys(cancelled, "cancelled"), **dict.fromkeys(walked, "started")}
        )
        await pipe.move(
            {job_id: "failed" if i % 4 == 0 else "success" for i, job_id in enumerate(walked)}
        )
        await pipe.dispatched()

    expected = {(j, s) for j in live for s in ("pending", sim.jobs[j].status)}
    expected |= {(j, "started") for j in walked}
    # History the baseline missed is test_shuffled_baseline_keeps_history_silent's business.
    events = [e for e in receiver.events if e["subject"] in live]
    assert {(e["subject"], e["data"]["status"]) for e in events} == expected
    assert len({e["id"] for e in events}) == len(expected) == 140
    assert receiver.rejected == 0
    assert receiver.mismatched_ids == []


async def test_shuffled_baseline_keeps_history_silent(pipe: Pipeline) -> None:
    sim = pipe.sim
    sim.configure(order="shuffled")
    sim.bulk_create(1000)  # finished long before the bridge started
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})}, page_limit=50, full_scan_interval="1s")
    async with running(config, pipe.redis):
        await pipe.baseline_done()
        baseline_at = float(await pipe.store.get_meta("full_scan:pcm") or 0)

        async def rescanned_twice() -> bool:
            return float(await pipe.store.get_meta("full_scan:pcm") or 0) >= baseline_at + 2

        await eventually(rescanned_twice, 10, "two full scans after the baseline")
        await pipe.dispatched()
    assert receiver.events == []


@ON_BOTH
async def test_api_faults_neither_lose_nor_invent_events(pipe: Pipeline) -> None:
    sim = pipe.sim
    sim.bulk_create(20)
    sim.set_faults(rate_500=0.3, rate_429=0.2, rate_malformed=0.1)
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})}, sources=["pcm", "v2"])
    history: dict[str, list[str]] = {}

    async def step(changes: dict[str, str]) -> None:
        await pipe.move(changes, timeout=30)
        for job_id, status in changes.items():
            history[job_id].append(status)

    async with running(config, pipe.redis):
        await pipe.baseline_done("pcm", "v2")
        pcm = [sim.create_job("pcm", t) for t in ("product-import", "price-import") * 4]
        v2 = [sim.create_job("v2", "order_export") for _ in range(2)]
        history.update({job_id: ["pending"] for job_id in pcm + v2})
        await pipe.observed(history, timeout=30)
        await step(
            {**dict.fromkeys(pcm[:2], "cancelled"), **dict.fromkeys(pcm[2:] + v2, "started")}
        )
        for job_id in pcm[2:5]:
            sim.add_errors(job_id, ["row 1: sku must be unique"])
        await step(
            {
                **dict.fromkeys(pcm[2:5] + v2[:1], "failed"),
                **dict.fromkeys(pcm[5:] + v2[1:], "success"),
            }
        )
        await pipe.dispatched(timeout=20)

    # The faults really hit (and malformed 200s come on top of these).
    assert pipe.api_statuses[500] > 0 and pipe.api_statuses[429] > 0, pipe.api_statuses
    ids_by_pair: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in receiver.events:
        data = event["data"]
        job_id = event["subject"]
        # No false event: only statuses the job really had, after the status it really left.
        assert data["status"] in history[job_id], event
        position = history[job_id].index(data["status"])
        assert data["previous_status"] == (history[job_id][position - 1] if position else None)
        ids_by_pair[(job_id, data["status"])].add(event["id"])
    expected = {(job_id, status) for job_id, walk in history.items() for status in walk}
    assert set(ids_by_pair) == expected
    assert all(len(ids) == 1 for ids in ids_by_pair.values())  # exactly once, by event id
    assert receiver.rejected == 0
    assert receiver.mismatched_ids == []


async def test_malformed_errors_reply_does_not_drop_the_errors(pipe: Pipeline) -> None:
    sim = pipe.sim
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})})
    async with running(config, pipe.redis):
        await pipe.baseline_done()
        jobs = [sim.create_job("pcm", "product-import") for _ in range(12)]
        await pipe.observed(jobs)
        await pipe.move(dict.fromkeys(jobs, "started"))
        for job_id in jobs:
            sim.add_errors(job_id, ["row 2: sku must be unique"])
        sim.set_faults(rate_malformed=0.5)
        await pipe.move(dict.fromkeys(jobs, "failed"), timeout=20)
        sim.set_faults(rate_malformed=0.0)
        await pipe.dispatched()
    failures = [e for e in receiver.events if e["data"]["status"] == "failed"]
    assert len(failures) == 12
    assert receiver.mismatched_ids == []
    assert [e["data"].get("errors") for e in failures] == [
        [{"message": "row 2: sku must be unique"}]
    ] * 12


# -- stalls and vanishing jobs -------------------------------------------------------------


async def test_stalled_job_emits_one_stalled_event(pipe: Pipeline) -> None:
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})}, stall_after="1s")
    async with running(config, pipe.redis) as bridge:
        await pipe.baseline_done()
        job_id = pipe.sim.create_job("pcm", "product-import")
        await eventually(lambda: (job_id, "stalled") in receiver.pairs(), 10, "a stalled event")
        [poller] = bridge.pollers
        cycles = poller.stats["cycles"]
        await eventually(lambda: poller.stats["cycles"] >= cycles + 5, 10, "five more cycles")
        await pipe.dispatched()

    assert [e["data"]["status"] for e in receiver.of(job_id)] == ["pending", "stalled"]
    assert receiver.mismatched_ids == []
    stalled = receiver.of(job_id)[1]
    assert stalled["type"] == "com.elasticpath.pcm.job.stalled"
    assert stalled["sequence"] == "2"
    assert stalled["data"]["previous_status"] == "pending"
    assert stalled["data"]["job"]["status"] == "pending"
    assert stalled["id"] != receiver.of(job_id)[0]["id"]


async def test_vanished_job_leaves_the_open_set_quietly(pipe: Pipeline) -> None:
    sim = pipe.sim
    known = sim.create_job("pcm", "product-import")  # recorded silently by the baseline
    receiver = await pipe.receiver()
    config = pipe.config({"everything": (receiver, {})})
    async with running(config, pipe.redis) as bridge:
        await pipe.baseline_done()
        seen = sim.create_job("pcm", "product-import")
        await pipe.observed([known, seen])
        assert set(await pipe.store.open_jobs("pcm")) == {known, seen}
        sim.expire(known)
        sim.expire(seen)
        await eventually(lambda: _empty(pipe.store), 10, "no open jobs")
        after = sim.create_job("pcm", "product-import")  # still polling, still delivering
        await pipe.observed([after])
        await pipe.dispatched()
        [poller] = bridge.pollers
        assert poller.consecutive_failures == 0

    assert sorted(receiver.pairs()) == sorted({(seen, "pending"), (after, "pending")})
    assert len(receiver.events) == 2
    assert receiver.mismatched_ids == []
    # History is kept: only the watch list forgets them.
    assert [s.status for s in await pipe.store.states("pcm", [known, seen])] == ["pending"] * 2


async def _empty(store: Store) -> bool:
    return await store.open_jobs("pcm") == {}
