"""/metrics through prometheus_client's own parser: the old families, and the new histograms."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import yaml
from apikit import STORE, SUBSCRIPTION, bridge_with_api
from helpers import eventually
from prometheus_client.parser import text_string_to_metric_families

from bridge import __version__

# Every family /metrics published before prometheus_client; scrapers outside depend on them.
OLD_FAMILIES = {
    "jobs_bridge_poll_cycles": ("counter", {"store", "source"}),
    "jobs_bridge_poll_requests": ("counter", {"store", "source"}),
    "jobs_bridge_poll_events": ("counter", {"store", "source"}),
    "jobs_bridge_poll_parse_errors": ("counter", {"store", "source"}),
    "jobs_bridge_poll_poll_failures": ("counter", {"store", "source"}),
    "jobs_bridge_delivered": ("counter", {"subscription"}),
    "jobs_bridge_failed_attempts": ("counter", {"subscription"}),
    "jobs_bridge_retries_scheduled": ("counter", {"subscription"}),
    "jobs_bridge_dead_lettered": ("counter", {"subscription"}),
    "jobs_bridge_subscription_enabled": ("gauge", {"subscription"}),
    "jobs_bridge_outbox_lag": ("gauge", {"store"}),
    "jobs_bridge_outbox_pending": ("gauge", {"store"}),
    "jobs_bridge_retry_queue": ("gauge", set()),
}
NEW_FAMILIES = {
    "jobs_bridge_poll_failures": ("counter", {"store", "source"}),
    "jobs_bridge_delivery_duration_seconds": ("histogram", {"subscription"}),
    "jobs_bridge_job_duration_seconds": ("histogram", {"store", "source", "job_type", "status"}),
    "jobs_bridge_job_wait_seconds": ("histogram", {"store", "source", "job_type"}),
    "jobs_bridge_jobs_finished": ("counter", {"store", "source", "job_type", "status"}),
    "jobs_bridge_last_poll_timestamp_seconds": ("gauge", {"store", "source"}),
    "jobs_bridge_subscription_backlog": ("gauge", {"subscription"}),
    "jobs_bridge_build_info": ("gauge", {"version"}),
    "jobs_bridge_loop_alive": ("gauge", {"loop"}),
    "jobs_bridge_loop_restarts": ("counter", {"loop"}),
}


def parse(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, name: str, suffix: str = "", **labels: str) -> float | None:
    for family in families.values():
        for s in family.samples:
            if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def test_metrics_keep_old_families_and_observe_a_finished_job(
    aiohttp_server, redis_client, redis_url
):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        status, text = await running.get("/metrics")
        assert status == 200
        families = parse(text)
        for name, (kind, labels) in {**OLD_FAMILIES, **NEW_FAMILIES}.items():
            assert name in families, name
            assert families[name].type == kind, name
            for s in families[name].samples:
                assert set(s.labels) - {"le"} == labels, (name, s.labels)

        job_id = running.sim.create_job(job_type="product-import")
        store = running.bridge.stores[STORE]

        async def status_is(wanted: str) -> bool:
            [state] = await store.states("pcm", [job_id])
            return state is not None and state.status == wanted

        await eventually(lambda: status_is("pending"), what="the job to be seen")
        running.sim.set_status(job_id, "started")
        await eventually(lambda: status_is("started"), what="the job to start")
        running.sim.set_status(job_id, "success")
        await eventually(lambda: status_is("success"), what="the job to finish")
        await eventually(lambda: len(running.hook.received) == 3, what="three deliveries")

        families = parse((await running.get("/metrics"))[1])
        job = {"store": STORE, "source": "pcm", "job_type": "product-import"}
        assert sample(families, "jobs_bridge_job_duration_seconds", "_count", **job) == 1
        assert sample(families, "jobs_bridge_job_wait_seconds", "_count", **job) == 1
        assert sample(families, "jobs_bridge_jobs_finished", "_total", **job) == 1
        assert sample(families, "jobs_bridge_job_duration_seconds", "_count", status="success") == 1
        assert (
            sample(
                families,
                "jobs_bridge_delivery_duration_seconds",
                "_count",
                subscription=SUBSCRIPTION,
            )
            == 3
        )
        last_poll = sample(families, "jobs_bridge_last_poll_timestamp_seconds", store=STORE)
        assert last_poll is not None and abs(time.time() - last_poll) < 10
        assert sample(families, "jobs_bridge_build_info", version=__version__) == 1
        assert sample(families, "jobs_bridge_loop_alive", loop=f"lane:{SUBSCRIPTION}:consume") == 1
        assert sample(families, "jobs_bridge_loop_restarts", "_total", loop="dispatcher") == 0

        async def no_backlog() -> bool:
            found = parse((await running.get("/metrics"))[1])
            return sample(found, "jobs_bridge_subscription_backlog", subscription=SUBSCRIPTION) == 0

        await eventually(no_backlog, what="no backlog (every event acknowledged)")
        assert sample(families, "jobs_bridge_delivered", "_total", subscription=SUBSCRIPTION) == 3

        # Seen again and again by later polls, the finished job is observed only once.
        cycles = running.bridge.pollers[0].stats["cycles"]
        await eventually(lambda: running.bridge.pollers[0].stats["cycles"] > cycles + 2)
        families = parse((await running.get("/metrics"))[1])
        assert sample(families, "jobs_bridge_job_duration_seconds", "_count", **job) == 1


def test_dashboard_and_alerts_use_only_published_metrics():
    deploy = Path(__file__).parent.parent / "deploy"
    rules = yaml.safe_load((deploy / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    dashboard = json.loads((deploy / "grafana-dashboard.json").read_text())
    queries = [rule["expr"] for rule in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    published = set()
    for name, (kind, _labels) in {**OLD_FAMILIES, **NEW_FAMILIES}.items():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        published |= {name + s for s in suffixes.get(kind, [""])}
    used = set(re.findall(r"\bjobs_bridge_[a-z_]+", " ".join(queries)))
    assert used and used <= published, used - published
    alerts = {rule["alert"] for rule in rules}
    assert {
        "JobsBridgeNoPoll",
        "JobsBridgeSubscriptionDisabled",
        "JobsBridgeBacklogGrowing",
        "JobsBridgeDeadLettersRising",
    } <= alerts
