"""Poll leases in one test process: fair shares, takeover, fencing, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import eventually
from structlog.testing import capture_logs
from test_store import job

from bridge.config import ConfigError, parse_config
from bridge.keys import lease_key
from bridge.leases import Leases
from bridge.leasestore import holder
from bridge.store import Fenced, Observation, Store

TTL = 3.0


@dataclass
class FakePoller:
    """A poller that only counts its cycles (a real one writes through its fence)."""

    store: Any
    source: str = "pcm"
    fence: str = ""
    cycles: int = 0
    follows: int = 0
    fences: list[str] = field(default_factory=list)

    async def follow(self) -> None:
        self.follows += 1

    async def run(self, stop: asyncio.Event) -> None:
        self.fences.append(self.fence)
        while not stop.is_set():
            self.cycles += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)


@dataclass
class Process:
    """One bridge process's leases, with a poller for each of `stores`."""

    leases: Leases
    pollers: list[FakePoller]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for poller in self.pollers:
            self.tasks.append(asyncio.create_task(self.leases.polling(poller)(self.stop)))
        self.tasks.append(asyncio.create_task(self.leases.run(self.stop)))

    def holding(self) -> set[str]:
        return {lease.store for lease in self.leases.held()}

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)
        await self.leases.close()

    async def crash(self) -> None:
        """Stops as kill -9 would: nothing released, no goodbye."""

        async def nothing(*_args: Any, **_kwargs: Any) -> None:
            return None

        self.leases._give_back = nothing  # type: ignore[method-assign]
        self.leases._leave = nothing  # type: ignore[method-assign]
        leases = list(self.leases.leases.values())
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for lease in leases:  # its timers die with it
            if lease.watchdog is not None:
                lease.watchdog.cancel()
        self.stop.set()
        await self.leases.close()


def process(redis: Any, name: str, stores: list[str]) -> Process:
    pollers = [FakePoller(SimpleNamespace(name=store)) for store in stores]
    return Process(Leases(redis, name, TTL), pollers)


@contextlib.asynccontextmanager
async def started(*processes: Process) -> AsyncIterator[None]:
    for p in processes:
        p.start()
    try:
        yield
    finally:
        for p in processes:
            if not p.stop.is_set():
                await p.finish()


def balanced(processes: list[Process], stores: list[str]) -> bool:
    """Every store held by exactly one process, none above its fair share."""
    holdings = [p.holding() for p in processes]
    share = math.ceil(len(stores) / len(processes))
    held = [store for h in holdings for store in h]
    return sorted(held) == sorted(stores) and all(len(h) <= share for h in holdings)


async def redis_holders(redis: Any, stores: list[str]) -> dict[str, str | None]:
    values = [await redis.get(lease_key(store, "pcm")) for store in stores]
    return {store: (holder(v) or (0, None))[1] for store, v in zip(stores, values, strict=True)}


async def test_a_single_process_takes_every_lease_before_its_first_cycle(redis_client):
    stores = [f"s{i}" for i in range(5)]
    alone = process(redis_client, "alone", stores)
    async with started(alone):
        await eventually(lambda: all(p.cycles for p in alone.pollers), 2, "every store polled")
        assert set((await redis_holders(redis_client, stores)).values()) == {"alone"}
        # The fence each poller wrote with is the lease's value in Redis, token first.
        for poller, store in zip(alone.pollers, stores, strict=True):
            assert poller.fences == [await redis_client.get(lease_key(store, "pcm"))]
            assert poller.fence.split(" ") == ["1", "alone"]
    # A clean stop releases every lease and leaves the process list.
    assert set((await redis_holders(redis_client, stores)).values()) == {None}
    assert await redis_client.zrange("jb:processes", 0, -1) == []


@pytest.mark.parametrize("count", [2, 3])
async def test_processes_share_leases_fairly_and_take_over_a_dead_ones(redis_client, count):
    stores = [f"s{i}" for i in range(10)]
    processes = [process(redis_client, f"p{i}", stores) for i in range(count)]
    async with started(*processes):
        await eventually(lambda: balanced(processes, stores), 3 * TTL, "a fair share each")
        held = await redis_holders(redis_client, stores)
        assert all(held[store] == p.leases.owner for p in processes for store in p.holding())
        # The first one dies without a word: its stores are polled again within the ttl.
        dead, *alive = processes
        orphans = dead.holding()
        before = {id(poller): poller.cycles for p in alive for poller in p.pollers}
        await dead.crash()
        loop = asyncio.get_running_loop()
        died = loop.time()
        await eventually(lambda: balanced(alive, stores), 2 * TTL, "the survivors' shares")
        assert loop.time() - died <= TTL + 0.5

        def polled_again(store: str) -> bool:
            return any(
                poller.cycles > before[id(poller)]
                for p in alive
                for poller in p.pollers
                if poller.store.name == store
            )

        await eventually(lambda: all(map(polled_again, orphans)), 1, "the orphans polled")


async def test_a_newcomer_gets_its_share_from_a_process_holding_everything(redis_client):
    stores = [f"s{i}" for i in range(6)]
    first = process(redis_client, "first", stores)
    async with started(first):
        await eventually(lambda: len(first.holding()) == 6, 2, "everything held by the first")
        second = process(redis_client, "second", stores)
        async with started(second):
            both = [first, second]
            await eventually(lambda: balanced(both, stores), 3 * TTL, "three stores each")
            assert len(first.holding()) == len(second.holding()) == 3


async def test_a_write_under_a_stale_lease_is_refused(redis_client):
    store = Store(redis_client, "fenced")
    old = process(redis_client, "old", ["fenced"])
    async with started(old):
        await eventually(lambda: old.pollers[0].fence, 2, "the lease taken")
        stale = old.pollers[0].fence
        await store.observe([Observation(job("j1"))], fence=stale)
    # Another process holds it now (the old one's expired while it was paused, say).
    new = process(redis_client, "new", ["fenced"])
    async with started(new):
        await eventually(lambda: new.pollers[0].fence, 2, "the lease taken by the new one")
        assert new.pollers[0].fence.split(" ") == ["2", "new"]
        with pytest.raises(Fenced):
            await store.observe([Observation(job("j1", status="started"))], fence=stale)
        with pytest.raises(Fenced):
            await store.mark_stalled(job("j1"), fence=stale)
        [(_, entry)] = await redis_client.xrange(store.events_key)
        assert entry["status"] == "pending"  # nothing written under the stale lease
        [outcome] = await store.observe(
            [Observation(job("j1", status="started"))], fence=new.pollers[0].fence
        )
        assert outcome.result == "emitted"


async def test_a_holder_whose_write_is_fenced_stops_and_logs_lease_lost(redis_client):
    class Writer(FakePoller):
        ended = False

        async def run(self, stop: asyncio.Event) -> None:
            store = Store(redis_client, self.store.name)
            try:
                while not stop.is_set():
                    self.cycles += 1
                    await store.observe([Observation(job(f"j{self.cycles}"))], fence=self.fence)
                    await asyncio.sleep(0.02)
            finally:
                self.ended = True

    writer = Writer(SimpleNamespace(name="taken"))
    leases = Leases(redis_client, "holder", TTL)
    one = Process(leases, [writer])
    with capture_logs() as logs:
        async with started(one):
            await eventually(lambda: writer.cycles > 2, 2, "a few writes")
            # Another process takes the lease over (as after an expiry): the next write fails.
            await redis_client.set(lease_key("taken", "pcm"), "99 other")
            await eventually(
                lambda: any(e["event"] == "lease_lost" for e in logs), 2, "lease_lost logged"
            )
            cycles = writer.cycles
            # The fence: the poller's run has ended (it raised on the fenced write).
            await eventually(lambda: writer.ended, 2, "the writer's end")
            assert writer.cycles == cycles  # not one write more
            assert not leases.held()
    lost = next(e for e in logs if e["event"] == "lease_lost")
    assert (lost["store"], lost["source"], lost["log_level"]) == ("taken", "pcm", "warning")


STORE_CONFIG = "{name: s, api_base: 'http://127.0.0.1:1', client_id: i, client_secret: s}"


@pytest.mark.parametrize(("line", "seconds"), [("", 15.0), ("lease_ttl: 3s\n", 3.0)])
def test_lease_ttl_is_configured_with_a_default_of_15s(line, seconds) -> None:
    config = parse_config(f"{line}stores: [{STORE_CONFIG}]", environ={})
    assert config.lease_ttl == seconds


@pytest.mark.parametrize("value", ["2s", "500ms", "11m"])
def test_a_lease_ttl_out_of_bounds_is_refused_with_its_path(value) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"lease_ttl: {value}\nstores: [{STORE_CONFIG}]", environ={})
    [problem] = caught.value.problems
    assert problem.startswith("lease_ttl: must be between 3s and 10m")
