"""Three `jobs-bridge run` processes on one Redis: one polls, the others take over when it is
killed (kill -9), no transition is lost or doubled, and the API sees the requests of one."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import config_text, eventually

from bridge.keys import lease_key
from bridge.leasestore import holder
from bridge.simulator import Simulator, make_app

LEASE_TTL = 3.0
POLL = {"poll_interval": "500ms", "idle_poll_interval": "1s"}
IDLE_POLL = 1.0
TRAFFIC = 18.0  # seconds of new jobs, then DRAIN seconds for the last ones to finish
DRAIN = 12.0
RATE = 1.0  # new jobs per second
# Each status is held longer than a takeover can take (ttl + a poll), so that every one of
# them is seen, whoever polls.
DWELL = (4.5, 5.5)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9")


@dataclass
class Traffic:
    """Jobs created and walked to an end, each transition recorded as the simulator made it."""

    sim: Simulator
    rng: random.Random = field(default_factory=lambda: random.Random(10))
    transitions: list[tuple[str, str]] = field(default_factory=list)

    async def run(self, seconds: float) -> None:
        walks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            walks.append(asyncio.create_task(self._walk()))
            await asyncio.sleep(1 / RATE)
        await asyncio.gather(*walks)

    async def _walk(self) -> None:
        job = self.sim.create_job()
        self.transitions.append((job, "pending"))
        await asyncio.sleep(self.rng.uniform(*DWELL))
        self.sim.set_status(job, "started")
        self.transitions.append((job, "started"))
        await asyncio.sleep(self.rng.uniform(*DWELL))
        final = "failed" if self.rng.random() < 0.25 else "success"
        if final == "failed":
            self.sim.add_errors(job, ["row 14: price amount must be a non-negative integer."])
        self.sim.set_status(job, final)
        self.transitions.append((job, final))


@dataclass
class Replicas:
    """`jobs-bridge run` processes of one config, their logs in files."""

    config: Path
    logs: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self) -> asyncio.subprocess.Process:
        log = (self.logs / f"replica-{len(self.processes)}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "--json-logs", "run", "-c", str(self.config),
            stdout=log, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        self.processes.append(process)
        return process

    def alive(self) -> list[asyncio.subprocess.Process]:
        return [p for p in self.processes if p.returncode is None]

    async def stop(self) -> None:
        for process in self.alive():
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def lease_holder(redis: Any, store: str) -> str | None:
    found = holder(await redis.get(lease_key(store, "pcm")))
    return found[1] if found else None


def pid_of(process_id: str) -> int:
    """hostname-pid-random -> pid."""
    return int(process_id.rsplit("-", 2)[1])


async def outbox_transitions(redis: Any, store: str) -> Counter[tuple[str, str]]:
    entries = await redis.xrange(f"jb:{{{store}}}:events")
    return Counter((json.loads(f["job"])["id"], f["status"]) for _id, f in entries)


async def kill_holder(redis: Any, store: str, group: Replicas) -> float:
    """kill -9 the process holding the lease, start another in its place (as an orchestrator
    would); seconds until another process held the lease."""
    dead = await lease_holder(redis, store)
    assert dead is not None
    [process] = [p for p in group.alive() if p.pid == pid_of(dead)]
    process.kill()
    killed = time.monotonic()

    async def taken() -> bool:
        now = await lease_holder(redis, store)
        return now is not None and now != dead

    await eventually(taken, 3 * LEASE_TTL, "another process to take the lease")
    took = time.monotonic() - killed
    await process.wait()
    await group.start()
    return took


@dataclass
class Phase:
    requests: int  # to the API, from the first job created to the last one finished
    transitions: list[tuple[str, str]]
    takeovers: list[float]
    status: str  # `jobs-bridge status` while it ran


async def run_phase(
    aiohttp_server, redis: Any, redis_url: str, tmp_path: Path, store: str, replicas: int
) -> Phase:
    """`replicas` processes poll one store under traffic; with more than one, the lease
    holder is killed three times."""
    sim = Simulator(seed=3)
    api_base = str((await aiohttp_server(make_app(sim))).make_url("")).rstrip("/")
    config = tmp_path / f"{store}.yaml"
    text = config_text(
        redis_url, store, api_base, [], store_options=POLL, lease_ttl=f"{LEASE_TTL:g}s"
    )
    config.write_text(text)
    group = Replicas(config, tmp_path)
    takeovers: list[float] = []
    try:
        for _ in range(replicas):
            await group.start()
        await eventually(lambda: lease_holder(redis, store), 30, "a first holder")
        # Jobs created before the baseline completes are history, recorded without events.
        meta = f"jb:{{{store}}}:meta"
        await eventually(lambda: redis.hexists(meta, "baseline:pcm"), 30, "the baseline")
        traffic = Traffic(sim)
        requests_before = sum(sim.requests.values())
        walking = asyncio.create_task(traffic.run(TRAFFIC))
        if replicas > 1:
            await asyncio.sleep(4)
            for _kill in range(3):
                takeovers.append(await kill_holder(redis, store, group))
                await asyncio.sleep(2)
        await walking
        await asyncio.sleep(DRAIN)  # the last jobs finish, and are seen finished
        requests = sum(sim.requests.values()) - requests_before
        status = await command("status", "-c", str(config))
        return Phase(requests, traffic.transitions, takeovers, status)
    finally:
        await group.stop()


async def command(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    return out.decode()


async def test_three_replicas_poll_as_one_and_take_over_from_a_killed_holder(
    aiohttp_server, redis_url, redis_client, tmp_path
):
    solo = await run_phase(aiohttp_server, redis_client, redis_url, tmp_path, "solo", 1)
    trio = await run_phase(aiohttp_server, redis_client, redis_url, tmp_path, "trio", 3)
    # Every transition the simulator made is in the outbox exactly once, kills or not.
    for phase, store in ((solo, "solo"), (trio, "trio")):
        assert len(phase.transitions) >= 3 * TRAFFIC * RATE * 0.9
        emitted = await outbox_transitions(redis_client, store)
        assert emitted == Counter(phase.transitions), store
    # Each time, another process polled within lease_ttl + one poll interval.
    assert len(trio.takeovers) == 3
    assert max(trio.takeovers) <= LEASE_TTL + IDLE_POLL, trio.takeovers
    # Three processes cost the API what one does.
    assert trio.requests <= 1.3 * solo.requests, (trio.requests, solo.requests)
    # `status` says who polls: one of the three live processes.
    [line] = [line for line in trio.status.splitlines() if line.startswith("trio/pcm")]
    [processes] = [line for line in trio.status.splitlines() if line.startswith("processes:")]
    polled_by = line.split("polled by: ")[1]
    assert polled_by in processes and len(processes.split(", ")) == 3
