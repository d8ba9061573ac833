"""Supervised loops: a loop that dies is logged, counted, restarted with backoff, and reported.

First the supervisor alone, then a real bridge (real Redis, the simulator, a real webhook
receiver) whose loops are killed while it runs.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import WebhookReceiver, eventually, make_config, running, start_receiver, webhook
from structlog.testing import capture_logs

import bridge.tasks
from bridge.app import Bridge
from bridge.config import BridgeConfig
from bridge.lanes import Lane
from bridge.poller import Poller
from bridge.simulator import Simulator, make_app
from bridge.sinks.webhook import WebhookSink
from bridge.tasks import LoopState, Supervisor, finish

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
REDIS_DOWN = "Error 111 connecting to 127.0.0.1:6390. Connection refused."


class Crash(BaseException):
    """Not an Exception: it escapes every `except Exception` of the bridge, as a bug might."""


def crashes(logs: list[dict[str, Any]], loop: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "loop_crashed" and e["loop"] == loop]


def state(supervisor: Supervisor, name: str) -> LoopState:
    [found] = [s for s in supervisor.states() if s.name == name]
    return found


def dying(times: int, error: BaseException) -> Callable[[asyncio.Event], Awaitable[None]]:
    """A loop that raises `error` on its first `times` runs, then runs until stopped."""
    runs = 0

    async def loop(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs <= times:
            raise error
        await stop.wait()

    return loop


# -- the supervisor alone ------------------------------------------------------------------


async def test_a_loop_that_dies_is_logged_counted_and_restarted_with_capped_backoff() -> None:
    supervisor = Supervisor()
    supervisor.backoff_first, supervisor.backoff_max = 0.01, 0.02
    stop = asyncio.Event()
    with capture_logs() as logs:
        supervisor.start("flaky", dying(3, redis.exceptions.ConnectionError(REDIS_DOWN)), stop)
        await eventually(lambda: len(crashes(logs, "flaky")) == 3, 5, "three deaths")
        await eventually(lambda: state(supervisor, "flaky").alive, 5, "the fourth run")
        stop.set()
        await asyncio.wait_for(supervisor.finish(grace=5), 5)

    deaths = crashes(logs, "flaky")
    assert [d["retry_in"] for d in deaths] == [0.01, 0.02, 0.02]  # doubling, capped
    assert [d["restarts"] for d in deaths] == [1, 2, 3]
    # The text too: repr() of a redis error is only "network:ConnectionError".
    assert {(d["error"], d["error_type"], d["log_level"]) for d in deaths} == {
        (REDIS_DOWN, "ConnectionError", "error")
    }
    assert all(isinstance(d["exc_info"], redis.exceptions.ConnectionError) for d in deaths)
    assert sum(e["event"] == "loop_restarted" for e in logs) == 3
    [final] = supervisor.states()
    assert (final.name, final.alive, final.restarts) == ("flaky", False, 3)  # stopped now
    assert final.last_error == f"ConnectionError: {REDIS_DOWN}"


async def test_a_healthy_run_starts_the_backoff_afresh() -> None:
    supervisor = Supervisor()
    supervisor.backoff_first = 0.01
    supervisor.healthy_after = 0.0  # every run counts as a healthy one
    stop = asyncio.Event()
    with capture_logs() as logs:
        supervisor.start("flaky", dying(3, ValueError("bad record")), stop)
        await eventually(lambda: state(supervisor, "flaky").restarts == 3, 5, "three deaths")
        stop.set()
        await supervisor.finish(grace=5)
    assert [d["retry_in"] for d in crashes(logs, "flaky")] == [0.01] * 3


async def test_a_loop_in_its_backoff_is_not_alive_and_a_stop_ends_the_wait() -> None:
    supervisor = Supervisor()
    supervisor.backoff_first = 30.0
    stop = asyncio.Event()
    supervisor.start("steady", dying(0, Crash()), stop)
    supervisor.start("broken", dying(1, Crash("boom")), stop)
    await eventually(lambda: state(supervisor, "broken").restarts == 1, 5, "the death")
    broken = state(supervisor, "broken")
    assert (broken.alive, broken.last_error) == (False, "Crash: boom")
    assert state(supervisor, "steady").alive
    assert [s.name for s in supervisor.states() if not s.alive] == ["broken"]
    stop.set()
    await asyncio.wait_for(supervisor.finish(grace=5), 2)  # not the 30 s backoff
    assert not any(s.alive for s in supervisor.states())


@pytest.mark.parametrize(
    "error",
    [asyncio.CancelledError(), None],
    ids=["stray-cancelled-error", "returned-early"],
)
async def test_a_loop_that_ends_by_itself_is_restarted(error: BaseException | None) -> None:
    """A CancelledError nobody asked for (libraries leak them), or a plain early return."""
    runs = 0

    async def loop(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            if error is not None:
                raise error
            return
        await stop.wait()

    supervisor = Supervisor()
    supervisor.backoff_first = 0.01
    stop = asyncio.Event()
    with capture_logs() as logs:
        supervisor.start("quitter", loop, stop)
        await eventually(lambda: runs == 2 and state(supervisor, "quitter").alive, 5, "a rerun")
        stop.set()
        await supervisor.finish(grace=5)
    [death] = crashes(logs, "quitter")
    assert death["error_type"] == ("CancelledError" if error else "LoopEnded")


async def test_cancellation_still_ends_every_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a stop: cancelled at once; one that swallows its cancellation is left behind."""
    monkeypatch.setattr(bridge.tasks, "CANCEL_WAIT", 0.2)
    release = asyncio.Event()

    async def obedient(_stop: asyncio.Event) -> None:
        await asyncio.Event().wait()

    async def stubborn(_stop: asyncio.Event) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass  # as a library might

    supervisor = Supervisor()
    stop = asyncio.Event()  # never set
    with capture_logs() as logs:
        supervisor.start("obedient", obedient, stop)
        supervisor.start("stubborn", stubborn, stop)
        await asyncio.wait_for(supervisor.finish(grace=0), 2)
    assert [e["tasks"] for e in logs if e["event"] == "tasks_did_not_stop"] == [["stubborn"]]
    assert not state(supervisor, "obedient").alive
    assert not crashes(logs, "obedient")
    release.set()
    await eventually(lambda: not state(supervisor, "stubborn").alive, 5, "the stubborn loop")


async def test_finish_reports_a_task_that_died_before_it_was_called() -> None:
    async def dies() -> None:
        raise redis.exceptions.ConnectionError(REDIS_DOWN)

    task = asyncio.create_task(dies(), name="early")
    await asyncio.wait({task})
    with capture_logs() as logs:
        await finish([task], grace=1)
    [failed] = [e for e in logs if e["event"] == "task_failed"]
    assert (failed["task"], failed["error"], failed["error_type"]) == (
        "early",
        REDIS_DOWN,
        "ConnectionError",
    )


# -- a real bridge -------------------------------------------------------------------------


@dataclass
class Setup:
    sim: Simulator
    receiver: WebhookReceiver
    config: BridgeConfig
    redis: aioredis.Redis

    async def delivered(self, bridge: Bridge) -> None:
        """A new job's first event goes all the way: simulator, poller, Redis, webhook."""
        await eventually(lambda: bridge.stores["shop"].get_meta("baseline:pcm"), 10, "the baseline")
        job_id = self.sim.create_job()
        await eventually(lambda: (job_id, "pending") in self.receiver.received, 10, "delivery")


@pytest.fixture
async def setup(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis, redis_url: str
) -> Setup:
    sim = Simulator(seed=3)
    sim_server = await aiohttp_server(make_app(sim))
    receiver = await start_receiver(aiohttp_server)
    api_base = str(sim_server.make_url("")).rstrip("/")
    hook = webhook("hook", receiver.url, receiver.secret)
    config = make_config(redis_url, "shop", api_base, [hook], allow_private_networks=True)
    return Setup(sim, receiver, config, redis_client)


async def test_a_lane_whose_sink_fails_to_start_is_restarted_and_delivers(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before supervision, the dispatcher died unseen and the process delivered nothing."""
    start = WebhookSink.start
    failures = [ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")]

    async def start_failing_once(self: WebhookSink) -> None:
        if failures:
            raise failures.pop()
        await start(self)

    monkeypatch.setattr(WebhookSink, "start", start_failing_once)
    with capture_logs() as logs:
        async with running(setup.config, setup.redis) as bridge:
            await setup.delivered(bridge)
            states = {s.name: s for s in bridge.supervisor.states()}
    lane = states["lane:hook"]
    assert (lane.alive, lane.restarts) == (True, 1)
    assert lane.last_error == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert all(s.alive and s.restarts == 0 for n, s in states.items() if n != "lane:hook")
    assert set(states) == {
        "poller:shop:pcm",
        "leases",
        "subscriptions",  # the API's subscriptions, watched (bridge.live)
        "dispatcher",
        "dispatcher:watch",
        "dispatcher:trim",
        "dispatcher:sweep",
        "lane:hook",
        "lane:hook:consume",
        "lane:hook:ack",
        "lane:hook:retry",
        "lane:hook:heartbeat",
        "lane:hook:claim",
    }
    [death] = crashes(logs, "lane:hook")
    assert (death["error"], death["error_type"]) == (
        "[Errno 111] Connection refused",
        "ConnectionRefusedError",
    )


@pytest.mark.parametrize(
    ("owner", "step", "loop"),
    [
        (Lane, "_consume_once", "lane:hook:consume"),
        (Poller, "cycle", "poller:shop:pcm"),
    ],
    ids=["lane-consume", "poller"],
)
async def test_a_loop_killed_in_a_running_bridge_is_restarted_and_works_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, owner: type, step: str, loop: str
) -> None:
    original = getattr(owner, step)
    armed: list[Crash] = []

    async def step_that_may_crash(self: Any) -> Any:
        if armed:
            raise armed.pop()
        return await original(self)

    monkeypatch.setattr(owner, step, step_that_may_crash)
    with capture_logs() as logs:
        async with running(setup.config, setup.redis) as bridge:
            await setup.delivered(bridge)  # working before
            armed.append(Crash(f"{step} blew up"))
            await eventually(lambda: state(bridge.supervisor, loop).restarts == 1, 10, "death")
            await setup.delivered(bridge)  # and working again after the restart
            after = state(bridge.supervisor, loop)
            others = [s for s in bridge.supervisor.states() if s.name != loop]
    assert (after.alive, after.last_error) == (True, f"Crash: {step} blew up")
    assert all(s.alive and s.restarts == 0 for s in others)
    [death] = crashes(logs, loop)
    assert (death["error"], death["error_type"], death["restarts"]) == (
        f"{step} blew up",
        "Crash",
        1,
    )
    assert any(e["event"] == "loop_restarted" and e["loop"] == loop for e in logs)
