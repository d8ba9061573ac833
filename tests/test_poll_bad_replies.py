"""Bad replies from the API: a poison job, a list that ignores its offset, huge bodies and
errors, redirects. Each is logged and counted; none stops the poller."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from aiohttp import web
from pollkit import FAST, ago, events, make_poller, named, transitions
from structlog.testing import capture_logs

from bridge.elasticpath import ApiError, ElasticPathClient, ReplyTooLarge
from bridge.joberrors import MAX_ERRORS_BYTES, TRUNCATED, cut_errors, cut_message
from bridge.simulator import Simulator, make_app


@pytest.fixture
async def sim_url(aiohttp_server):
    sim = Simulator(seed=5)
    server = await aiohttp_server(make_app(sim))
    return sim, str(server.make_url("")).rstrip("/")


async def test_a_poison_open_job_is_skipped_with_its_own_backoff(sim_url, redis_client):
    sim, base = sim_url
    poison = sim.create_job(status="started", created_at=ago(minutes=1))
    slow = sim.create_job(status="started", created_at=ago(minutes=1))
    for _ in range(150):  # both open jobs are beyond the first page: fetched one by one
        sim.create_job(status="success")
    settings = dataclasses.replace(FAST, stall_after=0.3, job_retry_base=0.4)
    poller = make_poller(base, redis_client, settings)
    try:
        await poller.cycle()
        sim.set_faults(bad_request_jobs=[poison])
        await asyncio.sleep(0.3)
        with capture_logs() as logs:
            first = await poller.cycle()
            second = await poller.cycle()  # within the poison job's backoff: not asked again
        assert (first.fetch_failed, first.fetched_open, first.stalled) == (1, 1, 1)
        assert (second.fetch_failed, second.deferred, second.requests) == (0, 1, 2)
        [failed] = named(logs, "job_fetch_failed")
        assert failed["job_id"] == poison and failed["failures"] == 1
        assert "400 Bad Request" in failed["error"]
        assert poller.stats["job_fetch_failures"] == 1 and poller.stats["poll_failures"] == 0
        assert await poller.store.get_meta("last_poll:pcm") is not None
        assert [(s, st) for s, _p, st in await transitions(poller.store)] == [(slow, "stalled")]
        await asyncio.sleep(0.45)
        with capture_logs() as logs:
            await poller.cycle()  # backoff over: asked again, fails again, waits twice as long
        assert named(logs, "job_fetch_failed")[0]["failures"] == 2
        sim.set_faults(bad_request_jobs=[])
        sim.set_status(poison, "success")
        await asyncio.sleep(0.85)
        await poller.cycle()
        assert (poison, "started", "success") in await transitions(poller.store)
    finally:
        await poller.client.close()


async def test_a_list_that_ignores_its_offset_ends_the_scan(sim_url, redis_client):
    sim, base = sim_url
    for _ in range(250):
        sim.create_job(status="success")
    sim.set_faults(ignore_offset=True)
    poller = make_poller(base, redis_client)
    try:
        with capture_logs() as logs:
            report = await asyncio.wait_for(poller.cycle(), 10)
        assert report.kind == "baseline" and report.truncated and report.pages == 1
        [repeated] = named(logs, "scan_page_repeated")
        assert repeated["log_level"] == "warning" and repeated["offset"] == 100
        # The baseline completes with what it saw rather than repeating the same page forever.
        assert named(logs, "baseline_incomplete")[0]["missing"] == 150
        assert await poller.store.get_meta("baseline:pcm") is not None
        fresh = [sim.create_job() for _ in range(3)]
        report = await asyncio.wait_for(poller.cycle(), 10)  # incremental: ends too
        assert report.truncated and poller.stats["repeated_pages"] == 2
        assert {s for s, _p, _st in await transitions(poller.store)} == set(fresh)
    finally:
        await poller.client.close()


async def test_twenty_one_megabyte_errors_make_a_small_event(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client)
    try:
        await poller.cycle()
        job_id = sim.create_job(status="started")
        sim.add_errors(job_id, [f"{i}: " + "x" * 1_000_000 for i in range(20)])
        sim.set_status(job_id, "failed")
        await poller.cycle()
        [event] = await events(poller.store)
        errors = event["data"]["errors"]
        assert len(errors) == 20
        assert all(len(e["message"].encode()) <= 2048 for e in errors)
        assert errors[7]["message"].startswith("7: xxx")
        assert errors[7]["message"].endswith(TRUNCATED)
        assert len(json.dumps(event)) < MAX_ERRORS_BYTES + 4096
        assert poller.client.stats["replies_too_large"] >= 1  # pages of 20 and 10 were refused
    finally:
        await poller.client.close()


def test_error_messages_are_cut_each_and_in_total() -> None:
    assert cut_message("short") == "short"
    cut = cut_message("é" * 2000, 100)  # two bytes each: never split inside a character
    assert cut.endswith(TRUNCATED) and len(cut.encode()) <= 100
    errors = cut_errors(["y" * 5000] * 100, limit=100)  # 32 of 2 KB fit in 64 KB
    assert errors[-1] == {"message": "... (68 more errors not shown)"}
    assert sum(len(e["message"].encode()) for e in errors[:-1]) <= MAX_ERRORS_BYTES
    assert len(cut_errors([f"e{i}" for i in range(150)], limit=100)) == 100


async def test_v2_job_error_text_is_cut_too(sim_url, redis_client):
    sim, base = sim_url
    poller = make_poller(base, redis_client, source="v2")
    try:
        await poller.cycle()
        job_id = sim.create_job(source="v2", status="started")
        sim.set_status(job_id, "failed")
        sim.jobs[job_id].error = "z" * 50_000
        await poller.cycle()
        [event] = await events(poller.store)
        [error] = event["data"]["errors"]
        assert error["message"].endswith(TRUNCATED) and len(error["message"]) <= 2048
    finally:
        await poller.client.close()


async def _serve(aiohttp_server, routes: list[web.RouteDef]):
    app = web.Application()
    app.add_routes(routes)
    return await aiohttp_server(app)


async def test_a_reply_over_the_size_cap_is_refused_and_counted(aiohttp_server):
    huge = b'{"data": [' + b'{"id": "x"},' * 1_000_000 + b'{"id": "y"}]}'  # 12 MB

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 3600})

    async def declared(_request: web.Request) -> web.Response:
        return web.Response(body=huge, content_type="application/json")

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no content-length to judge by
        await response.prepare(request)
        for at in range(0, len(huge), 1 << 20):
            await response.write(huge[at : at + (1 << 20)])
        await response.write_eof()
        return response

    server = await _serve(
        aiohttp_server,
        [
            web.post("/oauth/access_token", token),
            web.get("/v2/jobs", declared),
            web.get("/pcm/jobs", streamed),
        ],
    )
    client = ElasticPathClient(str(server.make_url("")), "id", "secret")
    try:
        with pytest.raises(ReplyTooLarge, match="larger than the 8388608-byte limit"):
            await client.list_v2_jobs()
        with pytest.raises(ReplyTooLarge, match="larger than the 8388608-byte limit"):
            await client.list_pcm_jobs()
        assert client.stats["replies_too_large"] == 2
    finally:
        await client.close()


async def test_a_redirect_from_the_token_endpoint_does_not_carry_the_secret(aiohttp_server):
    received: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        received.append(f"{request.method} {request.path} {await request.text()}")
        return web.json_response({"access_token": "stolen", "expires_in": 3600})

    thief = await _serve(aiohttp_server, [web.route("*", "/{tail:.*}", elsewhere)])

    async def redirect(_request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(str(thief.make_url("/oauth/access_token?x=1")))

    api = await _serve(aiohttp_server, [web.post("/oauth/access_token", redirect)])
    client = ElasticPathClient(str(api.make_url("")), "id", "very-secret-value")
    try:
        with pytest.raises(ApiError) as raised:
            await client.list_pcm_jobs()
        assert "HTTP 307 redirect to http://127.0.0.1:" in str(raised.value)
        assert "not followed" in str(raised.value) and "x=1" not in str(raised.value)
        assert not raised.value.retryable
    finally:
        await client.close()
    assert received == []


async def test_a_redirect_of_an_api_call_does_not_carry_the_token(aiohttp_server):
    received: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        received.append(request.headers.get("authorization", ""))
        return web.json_response({"data": []})

    thief = await _serve(aiohttp_server, [web.get("/{tail:.*}", elsewhere)])

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"access_token": "bearer-value", "expires_in": 3600})

    async def redirect(_request: web.Request) -> web.Response:
        raise web.HTTPFound(str(thief.make_url("/pcm/jobs")))

    api = await _serve(
        aiohttp_server, [web.post("/oauth/access_token", token), web.get("/pcm/jobs", redirect)]
    )
    client = ElasticPathClient(str(api.make_url("")), "id", "secret")
    try:
        with pytest.raises(ApiError, match=r"HTTP 302 redirect .* not followed"):
            await client.list_pcm_jobs()
    finally:
        await client.close()
    assert received == []


async def test_the_simulator_controls_for_these_faults(aiohttp_client) -> None:
    sim = Simulator(seed=1)
    client = await aiohttp_client(make_app(sim))
    job_id = sim.create_job()
    reply = await client.post(
        "/_sim/faults", json={"bad_request_jobs": [job_id], "ignore_offset": True}
    )
    assert reply.status == 200
    faults = (await reply.json())["faults"]
    assert faults["bad_request_jobs"] == [job_id] and faults["ignore_offset"] is True
    for body, message in (
        ({"bad_request_jobs": job_id}, "list of job ids"),
        ({"ignore_offset": 1}, "true or false"),
    ):
        reply = await client.post("/_sim/faults", json=body)
        assert reply.status == 400 and message in (await reply.json())["error"]
