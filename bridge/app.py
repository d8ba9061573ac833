"""Builds the bridge from its config, runs every task, and shuts everything down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from bridge.api import make_api
from bridge.config import BridgeConfig, StoreConfig, SubscriptionBase
from bridge.deliveries import Bounds
from bridge.dispatcher import Dispatcher, consumer_name
from bridge.elasticpath import ElasticPathClient
from bridge.embedded import EmbeddedRedis
from bridge.leases import Leases
from bridge.live import Live, deliverable
from bridge.metrics import Metrics
from bridge.poller import Poller, PollSettings
from bridge.redisclient import RedisClient, open_redis
from bridge.sinks.base import Sink, SinkContext
from bridge.sinks.registry import build_sink
from bridge.store import Store
from bridge.tasks import LoopState, Supervisor

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE = 15.0  # seconds a task may take to finish after a stop (dispatcher drains 10 s)
FIRST_ROUND_WAIT = 5.0  # seconds the API waits for the first leases before it starts anyway


@contextlib.asynccontextmanager
async def connect_redis(config: BridgeConfig) -> AsyncIterator[RedisClient]:
    """The configured Redis, or the embedded one under data_dir (started here if not running).

    Operator commands run beside a running bridge reach its embedded Redis by its socket.
    """
    embedded: EmbeddedRedis | None = None
    url = config.redis.url
    if url is None:
        server = EmbeddedRedis(config.data_dir / "redis")
        if await asyncio.to_thread(server.running):
            url = server.url  # a running bridge owns it; borrow it, leave it running
        else:
            embedded = server
            url = await asyncio.to_thread(server.start)
    client = open_redis(url, cluster=config.redis.cluster)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


class Bridge:
    """Every poller of every store, and the dispatcher of every subscription, over one Redis."""

    def __init__(
        self,
        config: BridgeConfig,
        redis: aioredis.Redis,
        *,
        claim_idle: float = 120.0,
        config_path: Path | None = None,
    ) -> None:
        # The config file's, with the API's subscriptions once bridge.live has read them.
        self.config = config
        self.redis = redis
        self.metrics = Metrics()
        # This process, as its leases and its consumers name it: hostname-pid-random.
        self.process_id = consumer_name()
        self.leases = Leases(redis, self.process_id, config.lease_ttl)
        self.stores: dict[str, Store] = {}
        self.clients: dict[str, ElasticPathClient] = {}
        self.pollers: list[Poller] = []
        self._poller_stops: dict[str, asyncio.Event] = {}  # per store: a reload stops its pollers
        self._stop = asyncio.Event()
        for store in config.stores:
            self.add_store(store, config)
        self.dispatcher = Dispatcher(
            redis,
            [store.events_key for store in self.stores.values()],
            deliverable(config, config.subscriptions),
            claim_idle=claim_idle,
            consumer=self.process_id,
            bounds=Bounds.from_config(config),
            outbox_retention=config.outbox_retention,
            outbox_max_entries=config.outbox_max_entries,
            consumer_retention=config.consumer_retention,
            on_attempt=self.metrics.observe_delivery,
            build_sink=self.sink_for,
        )
        # Every loop of this process, the dispatcher's own included: what /readyz reports.
        self.supervisor = Supervisor(children=[self.dispatcher.supervisor])
        self.live = Live(self, config_path)

    def sink_for(self, sub: SubscriptionBase) -> Sink[Any]:
        allow_private = self.config.subscription_allows_private(sub)
        return build_sink(sub, SinkContext(self.redis, allow_private))

    def add_store(self, store: StoreConfig, config: BridgeConfig) -> None:
        """The Redis state, API client and pollers of one store (started by start_pollers)."""
        retention = config.outbox_retention
        self.stores[store.name] = Store(self.redis, store.name, outbox_retention=retention)
        self.stores[store.name].analytics.observers.append(self.metrics.observe_job)
        self.clients[store.name] = client = ElasticPathClient(
            store.api_base,
            store.client_id,
            store.client_secret.get_secret_value(),
            max_requests_per_second=store.max_requests_per_second,
            timeout=store.request_timeout,
            store=store.name,
        )
        settings = PollSettings.from_config(
            store, finished_job_retention=config.finished_job_retention
        )
        self.pollers += [
            Poller(client, self.stores[store.name], source, settings) for source in store.sources
        ]

    def start_pollers(self, name: str) -> None:
        stop = self._poller_stops[name] = asyncio.Event()
        if self._stop.is_set():
            stop.set()
        # Each polls while this process holds its lease (taken before its first cycle).
        for p in self.pollers:
            if p.store.name == name:
                self.supervisor.start(f"poller:{name}:{p.source}", self.leases.polling(p), stop)

    async def remove_store(self, name: str) -> None:
        """Stop the pollers of one store between cycles and forget it; its outbox stays."""
        self._poller_stops.pop(name, asyncio.Event()).set()
        pollers = [p for p in self.pollers if p.store.name == name]
        await asyncio.gather(
            *(self.supervisor.retire(f"poller:{name}:{p.source}", SHUTDOWN_GRACE) for p in pollers)
        )
        self.pollers[:] = [p for p in self.pollers if p.store.name != name]
        await self.clients.pop(name).close()
        del self.stores[name]

    def loop_states(self) -> list[LoopState]:
        """Every background loop of this process and whether it runs (/readyz, /metrics)."""
        return self.supervisor.states()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        # Every subscription's consumer groups exist before the first event is emitted: the
        # config file's (prepare), then the API's (their lanes are made by refresh).
        await self.dispatcher.prepare(stop)
        await self.live.refresh()
        for name in self.stores:
            self.start_pollers(name)
        self.supervisor.start("leases", self.leases.run, stop)
        self.supervisor.start("dispatcher", self.dispatcher.run, stop)
        # The API answers once the pollers hold their leases (or Redis kept them from it).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.leases.first_round.wait(), FIRST_ROUND_WAIT)
        self.live.supervise(self.supervisor, stop)
        api = await self._start_api()
        log.info("bridge_started", stores=len(self.stores), pollers=len(self.pollers))
        stopped = False
        try:
            await stop.wait()
            stopped = True
        finally:
            if api is not None:
                await api.cleanup()
            # A stop lets each task end its cycle; a cancellation ends them at once. Either is
            # safe: each observation is one atomic Lua script.
            stop.set()  # a task that swallowed its cancellation still ends at its next check
            for poller_stop in self._poller_stops.values():
                poller_stop.set()
            await self.supervisor.finish(grace=SHUTDOWN_GRACE if stopped else 0)
            await self.leases.close()
            for client in self.clients.values():
                await client.close()
            log.info("bridge_stopped")

    async def _start_api(self) -> web.AppRunner | None:
        api = self.config.api
        if api is None:
            return None
        token = api.token.get_secret_value() if api.token else None
        runner = web.AppRunner(make_api(self, token), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, api.host, api.port).start()
        log.info("api_listening", listen=api.listen, auth=token is not None)
        return runner


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)


async def run_until_stopped(
    config: BridgeConfig,
    seconds: float | None = None,
    extra: Callable[[aioredis.Redis, asyncio.Event], Awaitable[None]] | None = None,
    config_path: Path | None = None,
) -> None:
    """`jobs-bridge run`: until SIGINT/SIGTERM, or for `seconds`; SIGHUP reads `config_path`
    again."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    if seconds is not None:
        asyncio.get_running_loop().call_later(seconds, stop.set)
    async with connect_redis(config) as redis:
        bridge = Bridge(config, redis, config_path=config_path)
        if config_path is not None:
            with contextlib.suppress(NotImplementedError):
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, bridge.live.request_reload
                )
        jobs: list[Awaitable[None]] = [bridge.run(stop)]
        if extra is not None:
            jobs.append(extra(redis, stop))
        await asyncio.gather(*jobs)
