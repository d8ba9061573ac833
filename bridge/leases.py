"""Poll leases: each (store, source) is polled by one process at a time, shared out fairly.

A lease (bridge.leasestore) is taken with SET NX PX, renewed every ttl/3 by compare-and-renew
and released on a clean stop by compare-and-delete; its value carries a token counting its
acquisitions. The poller hands the value to the observe and stall scripts, which write nothing
once it is not the current one (fencing). With N processes alive (their heartbeats) and S
leases wanted, a process holds at most ceil(S/N) and sheds what it holds beyond that, so a
newcomer gets its share and a dead process's leases are taken over when they expire.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bridge.keys import lease_key
from bridge.leasestore import LeaseStore, Pair, holder
from bridge.redisclient import TRANSIENT
from bridge.store import Fenced
from bridge.tasks import Loop, describe

log = structlog.get_logger(__name__)

MARGIN = 0.02  # seconds after an expiry before looking again (Redis's clock vs ours)
MIN_TICK = 0.05  # seconds: never look again sooner than this
RETRY_TICK = 1.0  # seconds before a failed round is tried again (at most ttl/6)


class LeasedPoller(Protocol):
    """What the leases need of a poller (bridge.poller.Poller)."""

    @property
    def store(self) -> Any: ...  # its .name

    @property
    def source(self) -> str: ...

    fence: str  # the lease value its writes are made under

    def run(self, stop: asyncio.Event) -> Awaitable[None]: ...

    def follow(self) -> Awaitable[None]: ...  # read the state another process's polls leave


@dataclass(eq=False)
class Lease:
    """One (store, source) this process wants to poll, and its lease while it holds it."""

    store: str
    source: str
    value: str | None = None  # "<token> <process id>" while held
    acquired: asyncio.Event = field(default_factory=asyncio.Event)  # set while held
    ending: asyncio.Event = field(default_factory=asyncio.Event)  # stop after this cycle
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # stop now: it may be another's
    busy: bool = False  # its poller has not yet finished with the last holding
    watchdog: asyncio.TimerHandle | None = None

    @property
    def key(self) -> str:
        return lease_key(self.store, self.source)

    @property
    def pair(self) -> Pair:
        return self.store, self.source

    @property
    def held(self) -> bool:
        return self.value is not None


class Leases:
    """This process's share of the poll leases: takes, renews, sheds and releases them.

    `run` is the loop that does it; `polling(poller)` is the loop of one poller, which polls
    while its lease is held here and waits otherwise.
    """

    def __init__(self, redis: Any, owner: str, ttl: float) -> None:
        self.store = LeaseStore(redis, owner, ttl)
        self.owner = owner
        self.ttl = ttl
        self.leases: dict[str, Lease] = {}  # by key
        self.processes: dict[str, int] = {}  # live processes -> last heartbeat (Redis ms)
        self._wake = asyncio.Event()
        self.first_round = asyncio.Event()  # set once the first round has been tried

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    async def close(self) -> None:
        await self.store.close()

    def held(self) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.held]

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Every ttl/3, or sooner when a lease this process wants may be free: one round."""
        try:
            while not stop.is_set():
                try:
                    delay = await self.round()
                except TRANSIENT as exc:
                    delay = min(RETRY_TICK, self.ttl / 6)
                    log.warning("lease_round_failed", error=describe(exc))
                self.first_round.set()
                self._wake.clear()
                await _first_of(stop, self._wake, at_most=delay)
        finally:
            for lease in self.held():
                lease.ending.set()
            await self._leave()

    async def round(self) -> float:
        """Heartbeat, renew what is held, then take or shed leases; seconds to the next round."""
        now_ms, self.processes = await self.store.beat()
        await self._renew_held()
        leases = list(self.leases.values())
        values = await self.store.holders([lease.pair for lease in leases])
        holders = {lease.key: found for lease, found in zip(leases, values, strict=True)}
        cap = -(-len(self.leases) // max(1, len(self.processes)))  # ceil(S / N)
        keeping = [lease for lease in self.held() if not lease.ending.is_set()]
        if len(keeping) > cap:
            for lease in sorted(keeping, key=self._rank)[: len(keeping) - cap]:
                log.info("lease_shed", store=lease.store, source=lease.source, share=cap)
                lease.ending.set()
        elif len(keeping) < cap:
            missed = await self._take(holders, cap - len(keeping))
            if missed:  # another process was quicker to some: try others at once
                return MIN_TICK
        wanting = sum(not lease.ending.is_set() for lease in self.held()) < cap
        return self._next_round(now_ms, holders if wanting else {})

    def _next_round(self, now_ms: int, others: dict[str, tuple[str | None, int]]) -> float:
        """ttl/3, or just after a process's heartbeat or a wanted lease expires if sooner."""
        delay = self.ttl / 3
        for process, seen_ms in self.processes.items():
            if process != self.owner:
                delay = min(delay, (seen_ms + self._ttl_ms - now_ms) / 1000)
        for value, pttl_ms in others.values():
            found = holder(value)
            if found is not None and found[1] != self.owner and pttl_ms > 0:
                delay = min(delay, pttl_ms / 1000)
        return max(MIN_TICK, delay + MARGIN)

    def _rank(self, lease: Lease) -> int:
        """This process's preference for a lease (rendezvous hashing): stable, and different
        in each process, so that processes reach for different leases first."""
        return zlib.crc32(f"{self.owner} {lease.key}".encode())

    # -- Redis ---------------------------------------------------------------------------

    async def _leave(self) -> None:
        try:
            await self.store.beat(leaving=True)
        except TRANSIENT as exc:  # it drops out of the set within a ttl anyway
            log.warning("lease_leave_failed", error=describe(exc))

    async def _renew_held(self) -> None:
        held = [(lease, lease.value or "") for lease in self.held()]
        sent = asyncio.get_running_loop().time()
        results = await self.store.renew([(lease.pair, value) for lease, value in held])
        for (lease, value), result in zip(held, results, strict=True):
            if isinstance(result, BaseException) or lease.value != value:
                continue  # an error (raised below), or lost meanwhile (watchdog, fenced write)
            if result:
                self._watch(lease, sent)
            else:
                self._lose(lease, "taken over or expired")
        _raise_first(results)

    async def _take(self, holders: dict[str, tuple[str | None, int]], wanted: int) -> int:
        """Take up to `wanted` leases that are free, or still this process's in Redis though
        it let them go here (its renewals failed while Redis was failing over, say). Returns
        how many it reached for and found taken by another."""
        takeable = []
        for lease in self.leases.values():
            value = holders.get(lease.key, (None, 0))[0]
            found = holder(value)
            if not lease.held and not lease.busy and (found is None or found[1] == self.owner):
                takeable.append((lease, value))
        takeable.sort(key=lambda pair: self._rank(pair[0]), reverse=True)
        ours = [(lease, value) for lease, value in takeable[:wanted] if value is not None]
        free = [lease for lease, value in takeable[:wanted] if value is None]
        sent = asyncio.get_running_loop().time()
        # One still ours goes on with its token (the poller that last held it has ended).
        renewed = await self.store.renew([(lease.pair, value) for lease, value in ours])
        acquired = await self.store.acquire([lease.pair for lease in free])
        results: list[Any] = [
            value if done == 1 else done for (_, value), done in zip(ours, renewed, strict=True)
        ]
        results += acquired
        missed = 0
        for lease, result in zip([lease for lease, _ in ours] + free, results, strict=True):
            if isinstance(result, str) and lease.key in self.leases:
                self._hold(lease, result, sent)
            elif not isinstance(result, BaseException):
                missed += 1
        _raise_first(results)
        return missed

    async def _give_back(self, lease: Lease) -> None:
        """Release a lease whose poller has stopped (compare-and-delete)."""
        value = lease.value
        if value is None:
            return
        self._drop(lease)
        try:
            await self.store.release(lease.pair, value)
        except TRANSIENT as exc:  # it expires within a ttl anyway
            log.warning("lease_release_failed", store=lease.store, error=describe(exc))
            return
        log.info("lease_released", store=lease.store, source=lease.source, holder=value)

    # -- holding -------------------------------------------------------------------------

    def _hold(self, lease: Lease, value: str, sent: float) -> None:
        lease.value = value
        lease.busy = True
        lease.ending = asyncio.Event()
        lease.lost = asyncio.Event()
        lease.acquired.set()
        self._watch(lease, sent)
        log.info("lease_acquired", store=lease.store, source=lease.source, holder=value)

    def _watch(self, lease: Lease, sent: float) -> None:
        """Stop polling before the lease could expire in Redis: a renewal sent at `sent`
        keeps it until sent + ttl at the earliest; without another, stop ttl/6 before."""
        if lease.watchdog is not None:
            lease.watchdog.cancel()
        value = lease.value
        lease.watchdog = asyncio.get_running_loop().call_at(
            sent + self.ttl * 5 / 6, self._expire, lease, value
        )

    def _expire(self, lease: Lease, value: str | None) -> None:
        if lease.value == value:
            self._lose(lease, "not renewed in time")

    def _lose(self, lease: Lease, reason: str) -> None:
        if lease.value is None:
            return
        log.warning(
            "lease_lost", store=lease.store, source=lease.source, holder=lease.value, reason=reason
        )
        self._drop(lease)
        lease.lost.set()
        self._wake.set()  # look again now: it may be free to take back

    def _drop(self, lease: Lease) -> None:
        lease.value = None
        lease.acquired.clear()
        if lease.watchdog is not None:
            lease.watchdog.cancel()
            lease.watchdog = None

    # -- one poller ----------------------------------------------------------------------

    def polling(self, poller: LeasedPoller) -> Loop:
        """The loop of one poller: polls while this process holds its lease, else waits."""

        async def loop(stop: asyncio.Event) -> None:
            store, source = poller.store.name, poller.source
            lease = self.leases.setdefault(lease_key(store, source), Lease(store, source))
            self._wake.set()  # a lease wanted: count it now
            try:
                while not stop.is_set():
                    await self._wait_for(lease, poller, stop)
                    if lease.held and not stop.is_set():
                        await self._poll(lease, poller, stop)
            finally:
                self.leases.pop(lease.key, None)
                await self._give_back(lease)
                lease.busy = False

        return loop

    async def _wait_for(self, lease: Lease, poller: LeasedPoller, stop: asyncio.Event) -> None:
        """Until the lease is this process's: meanwhile the poller follows, every ttl/3, the
        state the holder's polls leave (a loss of Redis is then noticed whoever polls next)."""
        while not stop.is_set() and not lease.acquired.is_set():
            try:
                await poller.follow()
            except TRANSIENT as exc:
                log.debug(
                    "follow_failed", store=lease.store, source=lease.source, error=describe(exc)
                )
            await _first_of(stop, lease.acquired, at_most=self.ttl / 3)

    async def _poll(self, lease: Lease, poller: LeasedPoller, stop: asyncio.Event) -> None:
        """Run the poller until its lease ends: after its cycle when shed or stopping, at once
        when lost (another process may be polling already)."""
        poller.fence = lease.value or ""
        polling = asyncio.ensure_future(poller.run(lease.ending))
        try:
            await _first_of(stop, lease.lost, task=polling)
            if stop.is_set():
                lease.ending.set()
                await _first_of(lease.lost, task=polling)
            if not polling.done():
                polling.cancel()
            await asyncio.wait([polling])
            if not polling.cancelled() and isinstance(polling.exception(), Fenced):
                self._lose(lease, "a write was fenced off: another process holds it")
            elif not polling.cancelled() and polling.exception() is not None:
                raise polling.exception()  # type: ignore[misc]
        finally:
            if not polling.done():
                polling.cancel()
            poller.fence = ""
        await self._give_back(lease)
        lease.busy = False


def _raise_first(results: list[Any]) -> None:
    """The first error among the results of many calls, once each result was looked at."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _first_of(
    *events: asyncio.Event,
    task: asyncio.Future[Any] | None = None,
    at_most: float | None = None,
) -> None:
    """Wait until one of `events` is set, `task` is done, or `at_most` seconds pass."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(
            [*waits, *([task] if task else [])],
            timeout=at_most,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for wait in waits:
            wait.cancel()
