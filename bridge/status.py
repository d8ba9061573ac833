"""What the bridge knows of itself, read from Redis: the one status view the API and CLI show.

Any process can read it, a running bridge or `jobs-bridge status` beside it; the API adds
the counters only its own process holds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from bridge.config import BridgeConfig, SubscriptionBase
from bridge.deliveries import Deliveries
from bridge.jobs import format_epoch
from bridge.leasestore import lease_status, live_processes
from bridge.outbox import outbox_status
from bridge.store import Store

# Times of a subscription's status, in seconds since the epoch.
_SUBSCRIPTION_TIMES = ("last_success_at", "last_failure_at", "failing_since")


@dataclass(frozen=True, slots=True)
class StoreStatus:
    name: str
    sources: dict[str, dict[str, Any]]  # source -> Store.source_status
    outbox: dict[str, int | None]  # bridge.outbox.outbox_status


@dataclass(frozen=True, slots=True)
class StatusView:
    stores: list[StoreStatus]
    subscriptions: list[tuple[SubscriptionBase, dict[str, Any]]]  # with Deliveries.status
    processes: dict[str, float] = field(default_factory=dict)  # live_processes

    def to_json(
        self,
        pollers: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        counters: Mapping[str, dict[str, int]] | None = None,
    ) -> dict[str, Any]:
        """The API's /status, with this process's own facts of each poller and `counters`
        (`jobs-bridge status --json` has neither)."""
        pollers = pollers or {}
        counters = counters or {}
        return {
            "processes": [
                {"id": process, "last_heartbeat_at": format_epoch(seen)}
                for process, seen in self.processes.items()
            ],
            "pollers": [
                {
                    "store": store.name,
                    "source": source,
                    **found,
                    "last_poll_at": format_epoch(found["last_poll_at"]),
                    **pollers.get((store.name, source), {}),
                }
                for store in self.stores
                for source, found in store.sources.items()
            ],
            "outboxes": {store.name: store.outbox for store in self.stores},
            "subscriptions": [
                {
                    "name": sub.name,
                    "type": sub.type,
                    "configured": sub.enabled,
                    **found,
                    **{key: format_epoch(found[key]) for key in _SUBSCRIPTION_TIMES},
                    "counters": counters.get(sub.name, {}),
                }
                for sub, found in self.subscriptions
            ],
        }

    def lines(self) -> list[str]:
        """`jobs-bridge status`: each store's sources and outbox, then each subscription."""
        lines = [f"processes: {', '.join(self.processes) or 'none running'}"] if self.stores else []
        for store in self.stores:
            for source, found in store.sources.items():
                baseline = "done" if found["baseline_done"] else "NOT DONE"
                lease = found["lease"]
                lines.append(
                    f"{store.name}/{source:<4} baseline: {baseline}"
                    f"  last poll: {when(found['last_poll_at'])}  open jobs: {found['open_jobs']}"
                    f"  known jobs: {found['known_jobs']}"
                    f"  polled by: {lease['holder'] if lease else 'nobody'}"
                )
            lines.append(
                f"{store.name} outbox: {store.outbox['length']} event(s) kept, "
                f"{store.outbox['lag']} not yet dispatched, "
                f"{store.outbox['pending'] or 0} in delivery"
            )
        return lines + self.subscription_lines()

    def subscription_lines(self) -> list[str]:
        """Each subscription: enabled or why not, last success and failure, retries, dead."""
        lines = []
        for sub, found in self.subscriptions:
            state = "enabled" if found["enabled"] else f"DISABLED ({found['disabled_reason']})"
            if not sub.enabled:
                state = "off in config"
            lines.append(
                f"{sub.name:<20} {sub.type:<12} {state}  last ok: {when(found['last_success_at'])}"
                f"  last failure: {when(found['last_failure_at'])}  retrying: {found['retrying']}"
                f"  dead: {found['dead_letters']}"
            )
            if found["last_error"] and (found["failing_since"] or not found["enabled"]):
                lines.append(f"{'':<20} last error: {found['last_error']}")
        return lines


async def read_status(
    redis: aioredis.Redis, config: BridgeConfig, *, stores: bool = True
) -> StatusView:
    """The status of every store (unless not `stores`) and of every subscription."""
    found = []
    for store_config in config.stores if stores else ():
        store = Store(redis, store_config.name)
        sources: dict[str, dict[str, Any]] = {
            s: {**await store.source_status(s), "lease": await lease_status(redis, store.name, s)}
            for s in store_config.sources
        }
        found.append(StoreStatus(store.name, sources, await outbox_status(redis, store.events_key)))
    deliveries = Deliveries(redis)
    subscriptions = [(sub, await deliveries.status(sub.name)) for sub in config.subscriptions]
    return StatusView(found, subscriptions, await live_processes(redis) if stores else {})


def when(epoch: float | None) -> str:
    """A time as the command line shows it: `2024-01-05 13:46:42Z`, or `never`."""
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z"
