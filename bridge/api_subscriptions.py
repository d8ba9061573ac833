"""The admin API's subscription endpoints: the config file's and the API's, secrets never shown.

GET    /subscriptions               each subscription in effect, with its origin and health
GET    /subscriptions/{name}        one of them
PUT    /subscriptions/{name}        body: one entry of the config file without `name`;
                                    201 created, 200 replaced, 422 invalid, 409 config file's
DELETE /subscriptions/{name}        204; 409 config file's; its retries and dead letters stay
POST   /subscriptions/{name}/test   one `com.elasticpath.bridge.test` event through its sink

A change is stored in Redis and applied here at once; every other bridge on that Redis
applies it within seconds (bridge.live). Refusals are the API's JSON errors (bridge.apiguard);
`describe` adds these endpoints to the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from bridge.apiguard import ApiError
from bridge.catalog import API, EntryInvalid, Subscriptions, parse_entry
from bridge.openapi import (
    HEALTH_PROPERTIES,
    NULLABLE_NUMBER,
    NULLABLE_STRING,
    array,
    obj,
    ref,
)
from bridge.sinks.registry import SINKS
from bridge.subscription_view import subscription_view, subscription_views
from bridge.testevent import send_test

if TYPE_CHECKING:
    from bridge.app import Bridge
    from bridge.config import SubscriptionBase

log = structlog.get_logger(__name__)

BRIDGE: web.AppKey[Bridge] = web.AppKey("subscriptions_bridge")


def add_routes(app: web.Application, bridge: Bridge) -> None:
    app[BRIDGE] = bridge
    app.router.add_get("/subscriptions", list_subscriptions)
    app.router.add_get("/subscriptions/{name}", get_subscription)
    app.router.add_put("/subscriptions/{name}", put_subscription)
    app.router.add_delete("/subscriptions/{name}", delete_subscription)
    app.router.add_post("/subscriptions/{name}/test", test_subscription)


async def _current(bridge: Bridge) -> Subscriptions:
    """Read fresh from Redis: a change made through another bridge shows at once."""
    _version, api = await bridge.live.catalog.subscriptions()
    return Subscriptions(bridge.live.file_config.subscriptions, api)


async def _find(request: web.Request) -> tuple[SubscriptionBase, str]:
    name = request.match_info["name"]
    found = (await _current(request.app[BRIDGE])).get(name)
    if found is None:
        raise ApiError(404, f"no subscription named {name!r}")
    return found


def _not_in_config_file(bridge: Bridge, name: str) -> None:
    """The API may not change a subscription of the config file: 409."""
    if any(sub.name == name for sub in bridge.live.file_config.subscriptions):
        message = f"subscription {name!r} is defined in the config file; change it there"
        raise ApiError(409, message)


async def list_subscriptions(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    views = await subscription_views(bridge.redis, await _current(bridge))
    return web.json_response({"subscriptions": views})


async def get_subscription(request: web.Request) -> web.Response:
    found = await _find(request)
    return web.json_response(await subscription_view(request.app[BRIDGE].redis, *found))


async def put_subscription(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    name = request.match_info["name"]
    try:
        body: Any = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body must be JSON: one subscription entry") from None
    _not_in_config_file(bridge, name)
    stores = [store.name for store in bridge.live.file_config.stores]
    try:
        sub = parse_entry(name, body, stores)
    except EntryInvalid as exc:
        raise ApiError(422, f"invalid subscription: {exc}", exc.to_json()) from None
    created = await bridge.live.catalog.put(name, body)
    await bridge.live.refresh()
    log.info("subscription_stored", subscription=name, type=sub.type, created=created)
    view = await subscription_view(bridge.redis, sub, API)
    return web.json_response(view, status=201 if created else 200)


async def delete_subscription(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    name = request.match_info["name"]
    _not_in_config_file(bridge, name)
    if not await bridge.live.catalog.delete(name):
        raise ApiError(404, f"no subscription named {name!r}")
    await bridge.live.refresh()
    log.info("subscription_deleted", subscription=name)
    return web.Response(status=204)


async def test_subscription(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    sub, _origin = await _find(request)
    outcome = await send_test(bridge.redis, bridge.live.file_config, sub)
    return web.json_response(asdict(outcome))


# -- the OpenAPI description ------------------------------------------------------------------


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_REFUSED = {
    "400": _json("Error", "the body is not JSON"),
    "401": _json("Error", "missing or wrong bearer token"),
    "403": _json("Error", "no token configured and the Host is not a loopback name"),
    "404": _json("Error", "no such subscription"),
}
_CHANGES = {
    "409": _json("Error", "a subscription of the config file: read-only here"),
    "415": _json("Error", "content-type is not application/json"),
}
SCHEMAS: dict[str, Any] = {
    "SubscriptionHealth": obj(
        ["enabled", "disabled_reason", "last_success_at", "last_failure_at", "last_error"],
        HEALTH_PROPERTIES,
    ),
    "Subscription": obj(
        ["name", "origin", "type", "health"],
        {
            "name": {"type": "string"},
            "origin": {"enum": ["config", "api"]},
            "type": {"enum": list(SINKS)},
            "health": ref("SubscriptionHealth"),
        },
        description="Every setting of the entry (durations in seconds); secrets as ***",
    ),
    "Subscriptions": obj(["subscriptions"], {"subscriptions": array(ref("Subscription"))}),
    "SubscriptionEntry": obj(
        ["type"],
        {"type": {"enum": list(SINKS)}},
        description="One subscription entry of the config file, without its name",
    ),
    "TestOutcome": obj(
        ["ok", "status", "duration_ms", "error"],
        {
            "ok": {"type": "boolean"},
            "status": {"type": ["integer", "null"]},
            "duration_ms": NULLABLE_NUMBER,
            "error": NULLABLE_STRING,
        },
    ),
}
PATHS: dict[str, Any] = {
    "/subscriptions": {
        "get": {
            "summary": "Every subscription, the config file's and the API's",
            "responses": {"200": _json("Subscriptions", "config file's first"), **_REFUSED},
        }
    },
    "/subscriptions/{name}": {
        "get": {
            "summary": "One subscription",
            "parameters": _NAME,
            "responses": {"200": _json("Subscription", "the subscription"), **_REFUSED},
        },
        "put": {
            "summary": "Create or replace a subscription of the API",
            "parameters": _NAME,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("SubscriptionEntry")}},
            },
            "responses": {
                "200": _json("Subscription", "replaced"),
                "201": _json("Subscription", "created"),
                "422": _json("Error", "invalid: each problem with its path in `errors`"),
                **_REFUSED,
                **_CHANGES,
            },
        },
        "delete": {
            "summary": "Delete a subscription of the API (its attempts and dead letters stay)",
            "parameters": _NAME,
            "responses": {"204": {"description": "deleted"}, **_REFUSED, **_CHANGES},
        },
    },
    "/subscriptions/{name}/test": {
        "post": {
            "summary": "Send one com.elasticpath.bridge.test event through its sink",
            "parameters": _NAME,
            "responses": {
                "200": _json("TestOutcome", "what the attempt did"),
                **_REFUSED,
                "415": _CHANGES["415"],
            },
        }
    },
}


def describe(document: dict[str, Any]) -> None:
    """Add these endpoints and their schemas to the API's OpenAPI document."""
    document["paths"].update(PATHS)
    document["components"]["schemas"].update(SCHEMAS)
