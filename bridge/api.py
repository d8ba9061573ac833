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
from bridge.outbox import outbox_status
from bridge.status import read_status

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
    view = await read_status(bridge.redis, bridge.config)
    pollers = {
        (p.store.name, p.source): {
            "consecutive_failures": p.consecutive_failures,
            "counters": dict(p.stats),
        }
        for p in bridge.pollers
    }
    counters = {name: dict(counts) for name, counts in bridge.dispatcher.counts.items()}
    return web.json_response(view.to_json(pollers, counters))


_POLL_COUNTERS = (
    ("cycles", "Poll cycles completed."),
    ("requests", "Requests made to the Elastic Path API."),
    ("events", "Events appended to the outbox."),
    ("parse_errors", "Job records that could not be parsed."),
    ("poll_failures", "Poll cycles that failed (API or Redis trouble)."),
)
_DELIVERY_COUNTERS = (
    ("delivered", "Deliveries that succeeded."),
    ("failed_attempts", "Delivery attempts that failed."),
    ("retries_scheduled", "Failed deliveries put on the retry schedule."),
    ("dead_lettered", "Deliveries moved to the dead-letter stream."),
)


def _family(
    name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
) -> list[str]:
    """One metric family in the Prometheus text format."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{rendered}}} {value}")
    return lines


async def metrics(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    lines: list[str] = []
    for counter, help_text in _POLL_COUNTERS:
        samples = [
            ({"store": p.store.name, "source": p.source}, p.stats[counter]) for p in bridge.pollers
        ]
        lines += _family(f"jobs_bridge_poll_{counter}_total", "counter", help_text, samples)
    deliveries = Deliveries(bridge.redis)
    subs = [s.name for s in bridge.config.subscriptions]
    for counter, help_text in _DELIVERY_COUNTERS:
        samples = [({"subscription": s}, bridge.dispatcher.counts[s][counter]) for s in subs]
        lines += _family(f"jobs_bridge_{counter}_total", "counter", help_text, samples)
    enabled = [({"subscription": s}, float((await deliveries.health(s)).enabled)) for s in subs]
    lines += _family(
        "jobs_bridge_subscription_enabled", "gauge", "1 when enabled, 0 when disabled.", enabled
    )
    outboxes = {
        name: await outbox_status(bridge.redis, store.events_key)
        for name, store in bridge.stores.items()
    }
    lines += _family(
        "jobs_bridge_outbox_lag",
        "gauge",
        "Outbox events the dispatcher has not read yet.",
        [({"store": name}, float(o["lag"] or 0)) for name, o in outboxes.items()],
    )
    lines += _family(
        "jobs_bridge_outbox_pending",
        "gauge",
        "Outbox events read but not yet acknowledged (in delivery).",
        [({"store": name}, float(o["pending"] or 0)) for name, o in outboxes.items()],
    )
    lines += _family(
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
