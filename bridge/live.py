"""Live reconfiguration of a running bridge: the API's subscriptions as they change, and the
config file read again on SIGHUP, without a restart and without losing an event in flight.

Pollers of a removed or changed store stop between cycles; its events stay in its outbox.
Sinks change through Dispatcher.apply. An invalid file changes nothing: the running config
stays, and every problem is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from bridge.catalog import Catalog, Subscriptions, effective_config, missing_extra
from bridge.config import BridgeConfig, ConfigError, SubscriptionBase, load_config
from bridge.config.types import format_loc
from bridge.keys import SUBSCRIPTIONS_CHANNEL
from bridge.tasks import Supervisor

if TYPE_CHECKING:
    from bridge.app import Bridge

log = structlog.get_logger(__name__)

RECHECK = 2.0  # seconds between version checks: the safety net under the pub/sub message
# Top-level settings a reload applies; a change of any other one waits for a restart.
LIVE_KEYS = (
    "stores",
    "subscriptions",
    "allow_private_networks",
    "outbox_retention",
    "finished_job_retention",
)
# Top-level settings every store uses: a change restarts the pollers of every store.
STORE_KEYS = ("outbox_retention", "finished_job_retention")


def deliverable(config: BridgeConfig, subs: Sequence[SubscriptionBase]) -> list[SubscriptionBase]:
    """Subscriptions as the dispatcher gets them: an HTTP sink's allow_private_networks
    resolved against the config's own, so that a change of the config's reads as theirs."""
    return [
        sub.model_copy(update={"allow_private_networks": config.subscription_allows_private(sub)})
        if "allow_private_networks" in type(sub).model_fields
        else sub
        for sub in subs
    ]


def changes(kind: str, old: Sequence[Any], new: Sequence[Any], *, every: bool = False) -> dict:
    """`<kind>_added`, `_removed`, `_changed`: names, between two lists of named models.
    `every`: count each kept one as changed (a setting they all share changed)."""
    before = {item.name: item for item in old}
    after = {item.name: item for item in new}
    return {
        f"{kind}_added": [name for name in after if name not in before],
        f"{kind}_removed": [name for name in before if name not in after],
        f"{kind}_changed": [
            name for name in after if name in before and (every or after[name] != before[name])
        ],
    }


class Live:
    """Keeps one bridge's stores and subscriptions in step with its catalog and config file."""

    def __init__(self, bridge: Bridge, config_path: Path | None = None) -> None:
        self.bridge = bridge
        self.file_config = bridge.config  # the config file as last loaded
        self.config_path = config_path
        self.catalog = Catalog(bridge.redis)
        self.api: dict[str, SubscriptionBase] = {}
        self._version: int | None = None  # of the catalog last applied
        self._lock = asyncio.Lock()  # one change at a time
        self._reload_requested = asyncio.Event()

    @property
    def subscriptions(self) -> Subscriptions:
        return Subscriptions(self.file_config.subscriptions, self.api)

    def supervise(self, supervisor: Supervisor, stop: asyncio.Event) -> None:
        supervisor.start("subscriptions", self.watch_catalog, stop)
        if self.config_path is not None:
            supervisor.start("reload", self.watch_reloads, stop)

    # -- the API's subscriptions ------------------------------------------------------------

    async def watch_catalog(self, stop: asyncio.Event) -> None:
        """Apply each change of the catalog: at its message, or at the next version check."""
        pubsub = self.bridge.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(SUBSCRIPTIONS_CHANNEL)
            while not stop.is_set():
                await pubsub.get_message(timeout=RECHECK)
                await self.refresh()
        finally:
            await pubsub.aclose()

    async def refresh(self) -> None:
        """Read the catalog if its version moved (or it never was), and apply what changed."""
        async with self._lock:
            if self._version is not None and await self.catalog.version() == self._version:
                return
            version, api = await self.catalog.subscriptions()
            found = changes("subscriptions", list(self.api.values()), list(api.values()))
            first = self._version is None
            self._version, self.api = version, api
            if first or any(found.values()):
                await self._apply()
            if not first and any(found.values()):
                log.info("subscriptions_changed", version=version, **found)

    async def _apply(self) -> None:
        subs = self.subscriptions
        for name in subs.shadowed():
            log.warning("subscription_shadowed", subscription=name, by="config")
        self.bridge.config = effective_config(self.file_config, subs)
        await self.bridge.dispatcher.apply(deliverable(self.file_config, subs.all()))

    # -- the config file --------------------------------------------------------------------

    def request_reload(self) -> None:
        """The SIGHUP handler: the reload loop reads the file at once."""
        self._reload_requested.set()

    async def watch_reloads(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._reload_requested.wait(), timeout=1.0)
            except TimeoutError:
                continue
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Read the config file again and apply it; False (and nothing changed) if invalid."""
        path = self.config_path
        if path is None:
            raise RuntimeError("this bridge was not started from a config file")
        try:
            new = await asyncio.to_thread(load_config, path)
            _check_extras(new)
        except ConfigError as exc:
            log.error("config_reload_failed", path=str(path), problems=exc.problems)
            return False
        async with self._lock:
            old = self.file_config
            found = {
                **changes(
                    "stores", old.stores, new.stores,
                    every=any(getattr(old, k) != getattr(new, k) for k in STORE_KEYS),
                ),
                **changes("subscriptions", old.subscriptions, new.subscriptions),
            }  # fmt: skip
            await self._apply_stores(new, found)
            self.file_config = new
            await self._apply()
        later = [key for key in type(new).model_fields if key not in LIVE_KEYS]
        restart = [key for key in later if getattr(old, key) != getattr(new, key)]
        log.info("config_reloaded", path=str(path), **found, restart_needed=restart)
        return True

    async def _apply_stores(self, new: BridgeConfig, found: dict[str, list[str]]) -> None:
        bridge = self.bridge
        for name in found["stores_removed"] + found["stores_changed"]:
            await bridge.remove_store(name)
        starting = set(found["stores_added"] + found["stores_changed"])
        for store in new.stores:
            if store.name in starting:
                bridge.add_store(store, new)
        await bridge.dispatcher.set_outboxes([store.events_key for store in bridge.stores.values()])
        for name in starting:
            bridge.start_pollers(name)


def _check_extras(config: BridgeConfig) -> None:
    """ConfigError for each subscription whose sink this process could not build."""
    problems = [
        f"{format_loc(('subscriptions', index, 'type'))}: {missing}"
        for index, sub in enumerate(config.subscriptions)
        if (missing := missing_extra(sub)) is not None
    ]
    if problems:
        raise ConfigError(problems)
