"""Shared by the poll-side tests: a poller over the simulator and real Redis, and its outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.elasticpath import ElasticPathClient
from bridge.poller import Poller, PollSettings
from bridge.store import Store, event_from_outbox

FAST = PollSettings(
    poll_interval=0.05,
    idle_poll_interval=0.1,
    stall_after=3600,
    full_scan_interval=3600,
    page_limit=100,
)


def make_poller(
    base: str, redis, settings: PollSettings = FAST, source: str = "pcm", store: str = "s"
) -> Poller:
    client = ElasticPathClient(
        base, "sim-client", "sim-secret", max_requests_per_second=1000, backoff_base=0.001
    )
    return Poller(client, Store(redis, store), source, settings)


async def events(store: Store) -> list[dict]:
    return [event_from_outbox(f) for _i, f in await store.redis.xrange(store.events_key)]


async def transitions(store: Store) -> list[tuple[str, str | None, str]]:
    return [
        (e["subject"], e["data"]["previous_status"], e["data"]["status"])
        for e in await events(store)
    ]


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def named(logs: list[dict], event: str) -> list[dict]:
    """The captured log lines (structlog.testing.capture_logs) of one event name."""
    return [line for line in logs if line["event"] == event]
