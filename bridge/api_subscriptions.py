"""The admin API's subscription endpoints: the config file's and the API's, secrets never shown.

GET    /subscriptions               each subscription in effect, with its origin and health
GET    /subscriptions/{name}        one of them
PUT    /subscriptions/{name}        body: one entry of the config file without `name`;
                                    201 created, 200 replaced, 422 invalid, 409 config file's
DELETE /subscriptions/{name}        204; 409 config file's; its retries and dead letters stay
POST   /subscriptions/{name}/test   one `com.elasticpath.bridge.test` event through its sink

A change is stored in Redis and applied here at once; every other bridge on that Redis
applies it within seconds (bridge.live).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from bridge.catalog import API, EntryInvalid, Subscriptions, parse_entry
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _current(bridge: Bridge) -> Subscriptions:
    """Read fresh from Redis: a change made through another bridge shows at once."""
    _version, api = await bridge.live.catalog.subscriptions()
    return Subscriptions(bridge.live.file_config.subscriptions, api)


def _config_owned(name: str) -> web.Response:
    return _error(409, f"subscription {name!r} is defined in the config file; change it there")


async def _find(request: web.Request) -> tuple[SubscriptionBase, str] | web.Response:
    name = request.match_info["name"]
    found = (await _current(request.app[BRIDGE])).get(name)
    return found if found is not None else _error(404, f"no subscription named {name!r}")


async def list_subscriptions(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    views = await subscription_views(bridge.redis, await _current(bridge))
    return web.json_response({"subscriptions": views})


async def get_subscription(request: web.Request) -> web.Response:
    found = await _find(request)
    if isinstance(found, web.Response):
        return found
    return web.json_response(await subscription_view(request.app[BRIDGE].redis, *found))


async def put_subscription(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    name = request.match_info["name"]
    try:
        body: Any = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON: one subscription entry")
    if _in_config_file(bridge, name):
        return _config_owned(name)
    stores = [store.name for store in bridge.live.file_config.stores]
    try:
        sub = parse_entry(name, body, stores)
    except EntryInvalid as exc:
        return web.json_response({"errors": exc.to_json()}, status=422)
    created = await bridge.live.catalog.put(name, body)
    await bridge.live.refresh()
    log.info("subscription_stored", subscription=name, type=sub.type, created=created)
    view = await subscription_view(bridge.redis, sub, API)
    return web.json_response(view, status=201 if created else 200)


async def delete_subscription(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    name = request.match_info["name"]
    if _in_config_file(bridge, name):
        return _config_owned(name)
    if not await bridge.live.catalog.delete(name):
        return _error(404, f"no subscription named {name!r}")
    await bridge.live.refresh()
    log.info("subscription_deleted", subscription=name)
    return web.Response(status=204)


async def test_subscription(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    found = await _find(request)
    if isinstance(found, web.Response):
        return found
    outcome = await send_test(bridge.redis, bridge.live.file_config, found[0])
    return web.json_response(asdict(outcome))


def _in_config_file(bridge: Bridge, name: str) -> bool:
    """The API may not change a subscription of the config file."""
    return any(sub.name == name for sub in bridge.live.file_config.subscriptions)
