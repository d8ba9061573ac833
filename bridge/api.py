"""The bridge's own HTTP API: health for probes, status and metrics for the on-call engineer.

GET /                                 the console (a static page; it asks for the token)
GET /healthz                          no auth; 200 when Redis answers, 503 otherwise
GET /readyz                           no auth; 200 when Redis answers and every loop runs
GET /openapi.json                     no auth; this API, as an OpenAPI 3.1 document
GET /status                           every poller and subscription, as JSON
GET /metrics                          Prometheus text format
GET /events?count=N&store=S           the latest events with their deliveries
GET /events/{event_id}/attempts       every delivery attempt of one event
GET /subscriptions/{name}/attempts    the latest attempts of one subscription
GET /dlq?subscription=NAME&count=N    dead letters
POST /dlq/replay {"subscription"?, "id"? | "all": true}
GET /analytics?minutes=N&store=S      finished jobs per type over time, wait and run times
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from bridge import analytics, api_subscriptions, console, readiness
from bridge.activity import backlogs, recent_events
from bridge.apiguard import TOKEN, ApiError, access, int_query, json_body, json_errors
from bridge.deliveries import Deliveries
from bridge.keys import attempts_key, health_key
from bridge.metrics import CONTENT_TYPE
from bridge.openapi import document
from bridge.status import read_status

if TYPE_CHECKING:
    from bridge.app import Bridge
    from bridge.store import Store

log = structlog.get_logger(__name__)

BRIDGE: web.AppKey[Bridge] = web.AppKey("bridge")
ATTEMPTS_MAX = 1000
EVENTS_DEFAULT, EVENTS_MAX = 50, 500
ANALYTICS_DEFAULT = 60


class ReplayRequest(BaseModel):
    """The body of POST /dlq/replay."""

    model_config = ConfigDict(extra="forbid")
    subscription: StrictStr | None = None
    id: StrictStr | None = Field(None, pattern=r"^[0-9]+-[0-9]+$")
    all: StrictBool = False


async def _known_subscription(bridge: Bridge, name: str) -> None:
    """404 unless the subscription is configured or has left a trace in Redis (removed)."""
    if any(sub.name == name for sub in bridge.config.subscriptions):
        return
    if not await bridge.redis.exists(attempts_key(name), health_key(name)):
        raise ApiError(404, f"no subscription named {name!r}")


def _stores(request: web.Request) -> list[Store]:
    """The stores a `store` query parameter names (404 if unknown); all without one."""
    stores = request.app[BRIDGE].stores
    name = request.query.get("store")
    if name is None:
        return list(stores.values())
    if name not in stores:
        raise ApiError(404, f"no store named {name!r}")
    return [stores[name]]


async def healthz(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    try:
        await bridge.redis.ping()
    except Exception as exc:
        return web.json_response(
            {"status": "redis unreachable", "error": type(exc).__name__}, status=503
        )
    return web.json_response({"status": "ok"})


async def _readiness(bridge: Bridge) -> dict[str, Any]:
    reasons, loops = await readiness.check(bridge)
    return {
        "status": "not ready" if reasons else "ready",
        "reasons": reasons,
        "loops": [asdict(loop) for loop in loops],
    }


async def readyz(request: web.Request) -> web.Response:
    body = await _readiness(request.app[BRIDGE])
    return web.json_response(body, status=503 if body["reasons"] else 200)


async def status(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    view = await read_status(bridge.redis, bridge.config)
    pollers: dict[tuple[str, str], dict[str, Any]] = {
        (p.store.name, p.source): {
            "consecutive_failures": p.consecutive_failures,
            "counters": dict(p.stats),
        }
        for p in bridge.pollers
    }
    counters = {name: dict(counts) for name, counts in bridge.dispatcher.counts.items()}
    body = view.to_json(pollers, counters)
    backlog = await backlogs(
        bridge.redis, bridge.config.subscriptions, bridge.dispatcher.outbox_keys
    )
    for sub in body["subscriptions"]:
        sub["backlog"] = backlog[sub["name"]]
    # The console reads readiness here: a 503 from /readyz is an error line in a browser.
    body["readiness"] = await _readiness(bridge)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    return web.Response(
        body=await bridge.metrics.render(bridge), headers={"Content-Type": CONTENT_TYPE}
    )


async def events(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    count = int_query(request, "count", EVENTS_DEFAULT, high=EVENTS_MAX)
    found = await recent_events(bridge.redis, _stores(request), bridge.config.subscriptions, count)
    return web.json_response({"events": found})


async def job_analytics(request: web.Request) -> web.Response:
    minutes = int_query(request, "minutes", ANALYTICS_DEFAULT, high=analytics.RETENTION // 60)
    stores = _stores(request)
    return web.json_response(await analytics.report([s.analytics for s in stores], minutes))


async def openapi(request: web.Request) -> web.Response:
    described = document()
    api_subscriptions.describe(described)
    return web.json_response(described)


async def event_attempts(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    subscriptions = [sub.name for sub in bridge.config.subscriptions]
    attempts = await Deliveries(bridge.redis).attempts_for_event(
        request.match_info["event_id"], subscriptions
    )
    return web.json_response({"attempts": attempts})


async def subscription_attempts(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    name = request.match_info["name"]
    count = int_query(request, "count", 100, high=ATTEMPTS_MAX)
    await _known_subscription(bridge, name)
    attempts = await Deliveries(bridge.redis).attempts_for_subscription(name, count)
    return web.json_response({"attempts": attempts})


async def dlq_list(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    deliveries = Deliveries(bridge.redis)
    subscription = request.query.get("subscription")
    count = int_query(request, "count", 0, high=10_000)
    if count:
        letters = await deliveries.latest_dead_letters(count, subscription)
    else:
        letters = await deliveries.dead_letters(subscription)
    if subscription is not None and not letters:
        await _known_subscription(bridge, subscription)
    total = await deliveries.dead_letter_count()
    return web.json_response(
        {"dead_letters": [asdict(letter) for letter in letters], "total": total}
    )


async def dlq_replay(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    body = await json_body(request, ReplayRequest)
    if bool(body.id) == body.all:
        raise ApiError(400, 'give exactly one of "id" or "all": true')
    if body.subscription is not None:
        await _known_subscription(bridge, body.subscription)
    deliveries = Deliveries(bridge.redis)
    letters = await deliveries.dead_letters(body.subscription, body.id)
    queued = await deliveries.requeue(letters)
    log.info("dlq_replayed", queued=queued, subscription=body.subscription, id=body.id)
    return web.json_response({"queued": queued})


def make_api(bridge: Bridge, token: str | None) -> web.Application:
    app = web.Application(middlewares=[json_errors, access])
    app[BRIDGE] = bridge
    app[TOKEN] = token or ""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/events", events)
    app.router.add_get("/events/{event_id}/attempts", event_attempts)
    app.router.add_get("/subscriptions/{name}/attempts", subscription_attempts)
    app.router.add_get("/dlq", dlq_list)
    app.router.add_post("/dlq/replay", dlq_replay)
    app.router.add_get("/analytics", job_analytics)
    console.add_routes(app, token_required=bool(token))
    api_subscriptions.add_routes(app, bridge)
    return app
