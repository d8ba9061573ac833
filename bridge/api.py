"""The bridge's own HTTP API: health for probes, status and metrics for the on-call engineer.

GET /healthz                          no auth; 200 when Redis answers, 503 otherwise
GET /status                           every poller and subscription, as JSON
GET /metrics                          Prometheus text format
GET /events/{event_id}/attempts       every delivery attempt of one event
GET /subscriptions/{name}/attempts    the latest attempts of one subscription
GET /dlq?subscription=NAME            dead letters
POST /dlq/replay {"subscription"?, "id"? | "all": true}
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from bridge.deliveries import Deliveries
from bridge.dispatcher import GROUP
from bridge.jobs import format_epoch

if TYPE_CHECKING:
    from bridge.app import Bridge

log = structlog.get_logger(__name__)

BRIDGE = web.AppKey("bridge", "Bridge")
TOKEN = web.AppKey("token", str)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.path != "/healthz":
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    try:
        await bridge.redis.ping()
    except Exception as exc:
        return web.json_response(
            {"status": "redis unreachable", "error": type(exc).__name__}, status=503
        )
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    deliveries = Deliveries(bridge.redis)
    pollers = []
    for poller in bridge.pollers:
        known = await poller.store.source_status(poller.source)
        pollers.append(
            {
                "store": poller.store.name,
                "source": poller.source,
                **known,
                "last_poll_at": format_epoch(known["last_poll_at"]),
                "consecutive_failures": poller.consecutive_failures,
                "counters": dict(poller.stats),
            }
        )
    outboxes = {name: await store.outbox_status(GROUP) for name, store in bridge.stores.items()}
    subscriptions = []
    for sub in bridge.config.subscriptions:
        found = await deliveries.status(sub.name)
        subscriptions.append(
            {
                "name": sub.name,
                "type": sub.type,
                "configured": sub.enabled,
                **found,
                **{
                    k: format_epoch(found[k])
                    for k in ("last_success_at", "last_failure_at", "failing_since")
                },
                "counters": dict(bridge.dispatcher.counts.get(sub.name, {})),
            }
        )
    return web.json_response(
        {"pollers": pollers, "outboxes": outboxes, "subscriptions": subscriptions}
    )


async def metrics(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    lines: list[str] = []

    def family(
        name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{rendered}}} {value}")

    poll_labels = [({"store": p.store.name, "source": p.source}, p) for p in bridge.pollers]
    for counter, help_text in (
        ("cycles", "Poll cycles completed."),
        ("requests", "Requests made to the Elastic Path API."),
        ("events", "Events appended to the outbox."),
        ("parse_errors", "Job records that could not be parsed."),
        ("poll_failures", "Poll cycles that failed (API or Redis trouble)."),
    ):
        family(
            f"jobs_bridge_poll_{counter}_total",
            "counter",
            help_text,
            [(labels, p.stats[counter]) for labels, p in poll_labels],
        )
    deliveries = Deliveries(bridge.redis)
    subs = [s.name for s in bridge.config.subscriptions]
    for counter, help_text in (
        ("delivered", "Deliveries that succeeded."),
        ("failed_attempts", "Delivery attempts that failed."),
        ("retries_scheduled", "Failed deliveries put on the retry schedule."),
        ("dead_lettered", "Deliveries moved to the dead-letter stream."),
    ):
        family(
            f"jobs_bridge_{counter}_total",
            "counter",
            help_text,
            [({"subscription": s}, bridge.dispatcher.counts[s][counter]) for s in subs],
        )
    enabled = [({"subscription": s}, float((await deliveries.health(s)).enabled)) for s in subs]
    family("jobs_bridge_subscription_enabled", "gauge", "1 when enabled, 0 when disabled.", enabled)
    outboxes = {name: await store.outbox_status(GROUP) for name, store in bridge.stores.items()}
    family(
        "jobs_bridge_outbox_lag",
        "gauge",
        "Outbox events the dispatcher has not read yet.",
        [({"store": name}, float(o["lag"] or 0)) for name, o in outboxes.items()],
    )
    family(
        "jobs_bridge_outbox_pending",
        "gauge",
        "Outbox events read but not yet acknowledged (in delivery).",
        [({"store": name}, float(o["pending"] or 0)) for name, o in outboxes.items()],
    )
    family(
        "jobs_bridge_retry_queue",
        "gauge",
        "Deliveries waiting for a retry.",
        [({}, float(await deliveries.retry_count()))],
    )
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def event_attempts(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    subscriptions = [sub.name for sub in bridge.config.subscriptions]
    attempts = await Deliveries(bridge.redis).attempts_for_event(
        request.match_info["event_id"], subscriptions
    )
    return web.json_response({"attempts": attempts})


async def subscription_attempts(request: web.Request) -> web.Response:
    deliveries = Deliveries(request.app[BRIDGE].redis)
    count = min(int(request.query.get("count", "100")), 1000)
    attempts = await deliveries.attempts_for_subscription(request.match_info["name"], count)
    return web.json_response({"attempts": attempts})


async def dlq_list(request: web.Request) -> web.Response:
    deliveries = Deliveries(request.app[BRIDGE].redis)
    letters = await deliveries.dead_letters(request.query.get("subscription"))
    return web.json_response({"dead_letters": [asdict(letter) for letter in letters]})


async def dlq_replay(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    if not isinstance(body, dict) or bool(body.get("id")) == bool(body.get("all")):
        return web.json_response({"error": 'give exactly one of "id" or "all": true'}, status=400)
    deliveries = Deliveries(request.app[BRIDGE].redis)
    letters = await deliveries.dead_letters(body.get("subscription"), body.get("id"))
    queued = await deliveries.requeue(letters)
    log.info("dlq_replayed", queued=queued, subscription=body.get("subscription"))
    return web.json_response({"queued": queued})


def make_api(bridge: Bridge, token: str | None) -> web.Application:
    app = web.Application(middlewares=[_auth])
    app[BRIDGE] = bridge
    app[TOKEN] = token or ""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/events/{event_id}/attempts", event_attempts)
    app.router.add_get("/subscriptions/{name}/attempts", subscription_attempts)
    app.router.add_get("/dlq", dlq_list)
    app.router.add_post("/dlq/replay", dlq_replay)
    return app
