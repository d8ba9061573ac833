"""The Elastic Path routes: the token, /pcm/jobs and /v2/jobs, answered as the real API does."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge.simulator.faults import bad_request, corrupt_records
from bridge.simulator.model import SimJob
from bridge.simulator.replies import (
    json_error,
    json_exception,
    pcm_not_found,
    v2_not_found,
)
from bridge.simulator.state import SIMULATOR

TOKEN_ROUTE = "POST /oauth/access_token"
DEFAULT_PAGE_LIMIT = 25
MAX_PAGE_LIMIT = 100


async def _token(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return json_error(
            400, status=400, title="Bad Request", detail="grant_type must be client_credentials"
        )
    if form.get("client_id") != sim.client_id or form.get("client_secret") != sim.client_secret:
        return json_error(
            401, status=401, title="Unauthorized", detail="Invalid client_id or client_secret"
        )
    reply = sim.issue_token()
    return web.json_response({"data": reply} if sim.token_reply_wrapped else reply)


def _page(request: web.Request) -> tuple[int, int]:
    """`page[limit]` and `page[offset]`, or a 400 in the JSON:API shape of the seeds."""
    values = []
    for name, default, lowest in (
        ("page[limit]", DEFAULT_PAGE_LIMIT, 1),
        ("page[offset]", 0, 0),
    ):
        raw = request.query.get(name, "")
        try:
            value = int(raw) if raw != "" else default
        except ValueError:
            value = -1
        if value < lowest or (name == "page[limit]" and value > MAX_PAGE_LIMIT):
            bounds = f"between 1 and {MAX_PAGE_LIMIT}" if lowest else "zero or more"
            body = {
                "errors": [
                    {"title": "Bad Request", "detail": f"{name} must be {bounds}", "status": "400"}
                ]
            }
            raise json_exception(web.HTTPBadRequest, body)
        values.append(value)
    return values[0], values[1]


def origin(request: web.Request) -> str:
    """The scheme and host the request was sent to, for links back to this server."""
    return f"{request.scheme}://{request.host}"


def _links(request: web.Request, offset: int, limit: int, total: int) -> dict[str, str | None]:
    def url(at: int) -> str:
        return f"{origin(request)}{request.path}?page[offset]={at}&page[limit]={limit}"

    last = max(total - 1, 0) // limit * limit
    return {
        "first": url(0),
        "last": url(last),
        "next": url(offset + limit) if offset + limit < total else None,
        "prev": url(max(offset - limit, 0)) if offset > 0 else None,
    }


def _pcm_job(request: web.Request) -> SimJob | None:
    job = request.app[SIMULATOR].jobs.get(request.match_info["id"])
    return job if job is not None and job.source == "pcm" else None


def _v2_job(request: web.Request) -> SimJob | None:
    job = request.app[SIMULATOR].jobs.get(request.match_info["id"])
    return job if job is not None and job.source == "v2" else None


async def _pcm_list(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    limit, offset = _page(request)
    if sim.faults.ignore_offset:
        offset = 0
    ordered = sim.pcm_jobs_in_order()
    page = [sim.render(job) for job in ordered[offset : offset + limit]]
    data = corrupt_records(sim.faults, sim.rng, page)
    body: dict[str, Any] = {"data": data, "meta": {"results": {"total": len(ordered)}}}
    if sim.include_links:
        body["links"] = _links(request, offset, limit, len(ordered))
    return web.json_response(body)


async def _pcm_get(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = _pcm_job(request)
    if job is None:
        return pcm_not_found()
    if (refused := bad_request(sim.faults, job.id)) is not None:
        return refused
    return web.json_response({"data": corrupt_records(sim.faults, sim.rng, [sim.render(job)])[0]})


async def _pcm_errors(request: web.Request) -> web.Response:
    job = _pcm_job(request)
    if job is None:
        return pcm_not_found()
    limit, offset = _page(request)
    data = [
        {"type": "pim-job-error", "id": error_id, "attributes": {"message": message}}
        for error_id, message in job.errors[offset : offset + limit]
    ]
    return web.json_response({"data": data, "meta": {"results": {"total": len(job.errors)}}})


async def _pcm_cancel(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = _pcm_job(request)
    if job is None:
        return pcm_not_found()
    if job.status != "pending":
        return json_error(
            422,
            title="Failed Validation",
            status="422",
            detail=f"Only pending jobs can be cancelled; this job is {job.status}.",
        )
    sim.set_status(job.id, "cancelled")
    return web.json_response({"data": sim.render(job)})


async def _v2_list(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    base = origin(request)
    records = [sim.render(job, base) for job in sim.jobs.values() if job.source == "v2"]
    return web.json_response({"data": corrupt_records(sim.faults, sim.rng, records)})


async def _v2_get(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = _v2_job(request)
    if job is None:
        return v2_not_found()
    if (refused := bad_request(sim.faults, job.id)) is not None:
        return refused
    record = sim.render(job, origin(request))
    return web.json_response({"data": corrupt_records(sim.faults, sim.rng, [record])[0]})


async def _v2_file(request: web.Request) -> web.Response:
    job = _v2_job(request)
    if job is None or job.status != "success":
        return v2_not_found()
    return web.json_response({"data": {"href": job.href}})


def add_routes(router: web.UrlDispatcher) -> None:
    """The API's routes; every one but the token needs a bearer token (see the middleware)."""
    router.add_post("/oauth/access_token", _token)
    router.add_get("/pcm/jobs", _pcm_list)
    router.add_get("/pcm/jobs/{id}", _pcm_get)
    router.add_get("/pcm/jobs/{id}/errors", _pcm_errors)
    router.add_post("/pcm/jobs/{id}/cancel", _pcm_cancel)
    router.add_get("/v2/jobs", _v2_list)
    router.add_get("/v2/jobs/{id}", _v2_get)
    router.add_get("/v2/jobs/{id}/file", _v2_file)
