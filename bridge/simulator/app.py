"""The fake API as an aiohttp application: its routes and the middleware in front of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from bridge.simulator import api, control
from bridge.simulator.api import TOKEN_ROUTE
from bridge.simulator.faults import early_fault, malformed
from bridge.simulator.replies import unauthorized
from bridge.simulator.state import SIMULATOR, Simulator

_API_PREFIXES = ("/pcm/", "/v2/")


def _route_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    canonical = getattr(resource, "canonical", None)
    return f"{request.method} {canonical}" if canonical else None


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@web.middleware
async def _api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    route = _route_of(request)
    if route is None or request.path.startswith("/_sim/"):
        return await handler(request)
    sim.count_request(route)
    is_api = request.path.startswith(_API_PREFIXES)
    faulty = is_api or (route == TOKEN_ROUTE and sim.faults.faults_on_token)
    if faulty:
        early = await early_fault(sim.faults, sim.rng, route)
        if early is not None:
            return early
    if is_api and not sim.token_valid(_bearer(request)):
        return unauthorized()
    response = await handler(request)
    return malformed(sim.faults, sim.rng, response) if faulty else response


def make_app(sim: Simulator) -> web.Application:
    """The fake API as an aiohttp application serving `sim`."""
    app = web.Application(middlewares=[_api_middleware])
    app[SIMULATOR] = sim

    async def stop_traffic_on_cleanup(_app: web.Application) -> AsyncIterator[None]:
        yield
        await sim.aclose()

    app.cleanup_ctx.append(stop_traffic_on_cleanup)
    api.add_routes(app.router)
    control.add_routes(app.router)
    return app
