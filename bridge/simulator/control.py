"""The /_sim control endpoints: tests and the demo drive the fake through these, without auth."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from bridge.simulator.api import origin
from bridge.simulator.replies import json_exception
from bridge.simulator.state import SIMULATOR, Simulator


async def _control_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _control_error(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _control_error(400, "the request body must be a JSON object")
    return body


def _control_error(status: int, message: str) -> web.HTTPException:
    exc_class = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return json_exception(exc_class, {"error": message})


def _control(
    handler: Callable[[Simulator, web.Request, dict[str, Any]], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Read the JSON body and turn the simulator's KeyError/ValueError into 404/400."""

    async def wrapped(request: web.Request) -> web.Response:
        body = await _control_body(request)
        try:
            return await handler(request.app[SIMULATOR], request, body)
        except KeyError as exc:
            raise _control_error(404, f"no job with id {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise _control_error(400, str(exc)) from None

    return wrapped


def _optional(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is not default and not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}")
    return value


@_control
async def _sim_create(sim: Simulator, request: web.Request, body: dict[str, Any]) -> web.Response:
    job_id = sim.create_job(
        source=_optional(body, "source", str, "pcm"),
        job_type=_optional(body, "type", str, None),
        status=_optional(body, "status", str, "pending"),
        meta=_optional(body, "meta", dict, None),
    )
    return web.json_response(
        {"id": job_id, "record": sim.record(job_id, origin(request))}, status=201
    )


@_control
async def _sim_status(sim: Simulator, request: web.Request, body: dict[str, Any]) -> web.Response:
    job_id = request.match_info["id"]
    status = body.get("status")
    if not isinstance(status, str):
        raise ValueError("status is required and must be a string")
    sim.set_status(job_id, status, force=_optional(body, "force", bool, False))
    return web.json_response({"id": job_id, "record": sim.record(job_id, origin(request))})


@_control
async def _sim_errors(sim: Simulator, request: web.Request, body: dict[str, Any]) -> web.Response:
    job_id = request.match_info["id"]
    sim.add_errors(job_id, body.get("messages"))
    return web.json_response({"id": job_id, "errors": len(sim.jobs[job_id].errors)})


@_control
async def _sim_expire(sim: Simulator, request: web.Request, _body: dict[str, Any]) -> web.Response:
    job_id = request.match_info["id"]
    sim.expire(job_id)
    return web.json_response({"id": job_id, "expired": True})


@_control
async def _sim_bulk(sim: Simulator, _request: web.Request, body: dict[str, Any]) -> web.Response:
    count = body.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError("count is required and must be an integer")
    ids = sim.bulk_create(
        count,
        source=_optional(body, "source", str, "pcm"),
        status=_optional(body, "status", str, "success"),
        job_type=_optional(body, "type", str, None),
    )
    return web.json_response({"created": len(ids), "jobs": len(sim.jobs)}, status=201)


@_control
async def _sim_faults(sim: Simulator, _request: web.Request, body: dict[str, Any]) -> web.Response:
    return web.json_response({"faults": asdict(sim.set_faults(**body))})


@_control
async def _sim_settings(
    sim: Simulator, _request: web.Request, body: dict[str, Any]
) -> web.Response:
    return web.json_response({"settings": sim.configure(**body)})


@_control
async def _sim_stats(sim: Simulator, _request: web.Request, _body: dict[str, Any]) -> web.Response:
    return web.json_response(sim.stats())


@_control
async def _sim_traffic(sim: Simulator, _request: web.Request, body: dict[str, Any]) -> web.Response:
    rate = body.get("rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 10_000:
        raise ValueError("rate is required: jobs per second, 0 to stop")
    sim.start_traffic(float(rate))
    return web.json_response({"rate": sim.traffic_rate})


@_control
async def _sim_reset(sim: Simulator, _request: web.Request, _body: dict[str, Any]) -> web.Response:
    sim.reset()
    return web.json_response({"reset": True})


def add_routes(router: web.UrlDispatcher) -> None:
    """The control routes, all under /_sim/ (the middleware neither counts nor faults them)."""
    router.add_post("/_sim/jobs", _sim_create)
    router.add_post("/_sim/jobs/{id}/status", _sim_status)
    router.add_post("/_sim/jobs/{id}/errors", _sim_errors)
    router.add_delete("/_sim/jobs/{id}", _sim_expire)
    router.add_post("/_sim/bulk", _sim_bulk)
    router.add_post("/_sim/faults", _sim_faults)
    router.add_post("/_sim/settings", _sim_settings)
    router.add_get("/_sim/stats", _sim_stats)
    router.add_post("/_sim/traffic", _sim_traffic)
    router.add_post("/_sim/reset", _sim_reset)
