"""Prometheus metrics of one bridge, in a registry of its own.

Histograms are observed in this process (each finished job once, by the process that saw it
finish). Gauges whose values live in Redis are read at each scrape by a custom collector, so
every process reports the same shared state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge import __version__
from bridge.activity import backlogs
from bridge.analytics import BOUNDS
from bridge.deliveries import Deliveries
from bridge.jobs import Job
from bridge.outbox import outbox_status
from bridge.sinks import DeliveryResult

if TYPE_CHECKING:
    from bridge.app import Bridge

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)

POLL_COUNTERS = (
    ("cycles", "Poll cycles completed."),
    ("requests", "Requests made to the Elastic Path API."),
    ("events", "Events appended to the outbox."),
    ("parse_errors", "Job records that could not be parsed."),
    ("poll_failures", "Poll cycles that failed (API or Redis trouble)."),
)
DELIVERY_COUNTERS = (
    ("delivered", "Deliveries that succeeded."),
    ("failed_attempts", "Delivery attempts that failed."),
    ("retries_scheduled", "Failed deliveries put on the retry schedule."),
    ("dead_lettered", "Deliveries moved to the dead-letter stream."),
)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one scrape reads from Redis before the collector renders it."""

    bridge: Bridge
    last_polls: dict[tuple[str, str], float]
    enabled: dict[str, bool]
    outboxes: dict[str, dict[str, int | None]]
    retry_queue: int
    backlogs: dict[str, int]


class Metrics:
    """The histograms this process observes, and the collector of everything else."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.delivery_duration = Histogram(
            "jobs_bridge_delivery_duration_seconds",
            "Duration of delivery attempts, successful or not.",
            ["subscription"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "jobs_bridge_job_duration_seconds",
            "Run time of finished jobs (completed_at - started_at), observed once per job.",
            ["store", "source", "job_type", "status"],
            buckets=BOUNDS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "jobs_bridge_jobs_finished",
            "Jobs seen reaching a final status (success, failed, cancelled), counted once each.",
            ["store", "source", "job_type", "status"],
            registry=self.registry,
        )
        self.job_wait = Histogram(
            "jobs_bridge_job_wait_seconds",
            "Queue time of finished jobs (started_at - created_at), observed once per job.",
            ["store", "source", "job_type"],
            buckets=BOUNDS,
            registry=self.registry,
        )
        self._delivery_durations: dict[str, Histogram] = {}
        self._collector = _BridgeCollector()
        self.registry.register(self._collector)

    def observe_delivery(self, subscription: str, result: DeliveryResult) -> None:
        # The labelled child looked up once per subscription: this runs once per delivery.
        child = self._delivery_durations.get(subscription)
        if child is None:
            child = self._delivery_durations[subscription] = self.delivery_duration.labels(
                subscription
            )
        child.observe(result.duration_ms / 1000)

    def observe_job(self, store: str, job: Job, wait: float | None, run: float | None) -> None:
        self.jobs_finished.labels(store, job.source, job.type, job.status).inc()
        if run is not None:
            self.job_duration.labels(store, job.source, job.type, job.status).observe(run)
        if wait is not None:
            self.job_wait.labels(store, job.source, job.type).observe(wait)

    async def render(self, bridge: Bridge) -> bytes:
        """The Prometheus text of this bridge now."""
        snapshot = await _read(bridge)
        # No await between these two lines: a concurrent scrape cannot swap the snapshot.
        self._collector.snapshot = snapshot
        return generate_latest(self.registry)


async def _read(bridge: Bridge) -> _Snapshot:
    deliveries = Deliveries(bridge.redis)
    last_polls: dict[tuple[str, str], float] = {}
    for poller in bridge.pollers:
        found = await poller.store.get_meta(f"last_poll:{poller.source}")
        if found:
            last_polls[(poller.store.name, poller.source)] = float(found)
    subscriptions = bridge.config.subscriptions
    outboxes = {
        name: await outbox_status(bridge.redis, store.events_key)
        for name, store in bridge.stores.items()
    }
    return _Snapshot(
        bridge=bridge,
        last_polls=last_polls,
        enabled={s.name: (await deliveries.health(s.name)).enabled for s in subscriptions},
        outboxes=outboxes,
        retry_queue=await deliveries.retry_count(),
        backlogs=await backlogs(bridge.redis, subscriptions, bridge.dispatcher.outbox_keys),
    )


class _BridgeCollector:
    """Counters of this process's pollers and dispatcher, and gauges of the shared state."""

    def __init__(self) -> None:
        self.snapshot: _Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        bridge = snap.bridge
        for counter, help_text in POLL_COUNTERS:
            # `poll_failures` was first published with a doubled "poll"; both names stay.
            names = [f"jobs_bridge_poll_{counter}"]
            if counter == "poll_failures":
                names.append("jobs_bridge_poll_failures")
            for name in names:
                family = CounterMetricFamily(name, help_text, labels=["store", "source"])
                for p in bridge.pollers:
                    family.add_metric([p.store.name, p.source], p.stats[counter])
                yield family
        subs = [s.name for s in bridge.config.subscriptions]
        for counter, help_text in DELIVERY_COUNTERS:
            family = CounterMetricFamily(
                f"jobs_bridge_{counter}", help_text, labels=["subscription"]
            )
            for sub in subs:
                family.add_metric([sub], bridge.dispatcher.counts[sub][counter])
            yield family
        loops = bridge.loop_states()
        restarts = CounterMetricFamily(
            "jobs_bridge_loop_restarts",
            "Deaths (each followed by a restart) of a loop.",
            labels=["loop"],
        )
        alive = GaugeMetricFamily("jobs_bridge_loop_alive", "1 while a loop runs.", labels=["loop"])
        for loop in loops:
            restarts.add_metric([loop.name], loop.restarts)
            alive.add_metric([loop.name], float(loop.alive))
        yield restarts
        yield alive
        yield from self._gauges(snap)

    @staticmethod
    def _gauges(snap: _Snapshot) -> Iterator[Metric]:
        def gauge(name: str, help_text: str, labels: list[str], values: dict) -> Metric:
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for key, value in values.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], float(value))
            return family

        yield gauge(
            "jobs_bridge_subscription_enabled",
            "1 when enabled, 0 when disabled.",
            ["subscription"],
            snap.enabled,
        )
        for field, help_text in (
            ("lag", "Outbox events the dispatcher has not read yet."),
            ("pending", "Outbox events read but not yet acknowledged (in delivery)."),
        ):
            values = {name: o[field] or 0 for name, o in snap.outboxes.items()}
            yield gauge(f"jobs_bridge_outbox_{field}", help_text, ["store"], values)
        yield GaugeMetricFamily(
            "jobs_bridge_retry_queue", "Deliveries waiting for a retry.", value=snap.retry_queue
        )
        yield gauge(
            "jobs_bridge_last_poll_timestamp_seconds",
            "When each store and source was last polled (by any process), seconds since epoch.",
            ["store", "source"],
            snap.last_polls,
        )
        yield gauge(
            "jobs_bridge_subscription_backlog",
            "Events a subscription still owes: outbox events not yet handled, plus its retries.",
            ["subscription"],
            snap.backlogs,
        )
        yield gauge(
            "jobs_bridge_build_info", "Always 1; the version of this bridge.", ["version"],
            {__version__: 1},
        )  # fmt: skip
