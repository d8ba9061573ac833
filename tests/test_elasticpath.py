"""The Elastic Path API client against the simulator (and tiny local servers) over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.elasticpath import (
    ElasticPathClient,
    Forbidden,
    MalformedResponse,
    NotFound,
    TransientError,
)
from bridge.simulator import TOKEN_ROUTE, Faults, Simulator, make_app

Server = Callable[[web.Application], Awaitable[TestServer]]
MakeClient = Callable[..., Awaitable[ElasticPathClient]]

GET_JOB = "GET /pcm/jobs/{id}"
LIST_JOBS = "GET /pcm/jobs"


@pytest.fixture
def sim() -> Simulator:
    return Simulator(seed=11)


@pytest.fixture
async def make_client(aiohttp_server: Server) -> AsyncIterator[MakeClient]:
    """Clients of a local server: the simulator by default, any aiohttp app when given one."""
    clients: list[ElasticPathClient] = []

    async def make(
        target: Simulator | web.Application,
        secret: str = "sim-secret",
        **options: Any,
    ) -> ElasticPathClient:
        app = make_app(target) if isinstance(target, Simulator) else target
        server = await aiohttp_server(app)
        options = {"max_requests_per_second": 1000.0, "backoff_base": 0.01, **options}
        client = ElasticPathClient(
            str(server.make_url("")).rstrip("/"), "sim-client", secret, **options
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def faults_for_first(sim: Simulator, count: int, *, token: bool = False, **faults: Any) -> None:
    """Apply `faults` to the next `count` API (and, with `token`, token) requests only.

    The simulator counts a request before it draws its faults, so clearing them in the counter
    makes "fail N times, then succeed" exact instead of a race with a timer.
    """
    sim.set_faults(**faults)
    count_request = sim.count_request
    defaults = {f.name: getattr(Faults(), f.name) for f in fields(Faults)}
    seen = 0

    def counting(route: str) -> None:
        nonlocal seen
        count_request(route)
        if route == TOKEN_ROUTE and not token:
            return
        seen += 1
        if seen > count:
            sim.set_faults(**{name: defaults[name] for name in faults if name.startswith("rate_")})

    sim.count_request = counting  # type: ignore[method-assign]


def arrivals(sim: Simulator, route: str) -> list[float]:
    return [at for at, name in sim.request_log if name == route]


# Tokens


@pytest.mark.parametrize("wrapped", [False, True], ids=["flat", "data-wrapped"])
async def test_token_reply_flat_or_wrapped(
    make_client: MakeClient, sim: Simulator, wrapped: bool
) -> None:
    sim.configure(token_reply_wrapped=wrapped)
    job_id = sim.create_job()
    client = await make_client(sim)
    assert (await client.get_pcm_job(job_id))["id"] == job_id
    assert sim.tokens_issued == 1
    assert client.tokens.refreshes == 1


async def test_token_is_refreshed_before_it_expires(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.configure(token_lifetime=1)  # the client refreshes a tenth early: after 0.9 s
    job_id = sim.create_job()
    client = await make_client(sim)
    await client.get_pcm_job(job_id)
    await client.get_pcm_job(job_id)
    assert sim.tokens_issued == 1
    await asyncio.sleep(0.95)
    await client.get_pcm_job(job_id)
    assert sim.tokens_issued == 2
    # Refreshed ahead of expiry: no request was spent on a 401.
    assert sim.requests[GET_JOB] == 3


async def test_a_401_refreshes_once_and_retries(make_client: MakeClient, sim: Simulator) -> None:
    job_id = sim.create_job()
    client = await make_client(sim)
    await client.get_pcm_job(job_id)
    sim.tokens.clear()  # the store revokes every token the client holds
    assert (await client.get_pcm_job(job_id))["id"] == job_id
    assert sim.tokens_issued == 2
    assert sim.requests[GET_JOB] == 3


async def test_concurrent_401s_share_one_refresh(make_client: MakeClient, sim: Simulator) -> None:
    job_id = sim.create_job()
    client = await make_client(sim)
    await client.get_pcm_job(job_id)
    sim.tokens.clear()
    records = await asyncio.gather(*(client.get_pcm_job(job_id) for _ in range(20)))
    assert {record["id"] for record in records} == {job_id}
    assert sim.tokens_issued == 2


async def test_a_401_with_a_fresh_token_is_forbidden_not_a_loop(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.configure(token_lifetime=1e-6)  # every token is dead on arrival
    client = await make_client(sim)
    with pytest.raises(Forbidden) as caught:
        await client.get_pcm_job("some-id")
    assert caught.value.status == 401
    assert sim.tokens_issued == 2
    assert sim.requests[GET_JOB] == 2


async def test_concurrent_first_calls_make_one_token_request(
    make_client: MakeClient, sim: Simulator
) -> None:
    job_id = sim.create_job()
    client = await make_client(sim)
    records = await asyncio.gather(*(client.get_pcm_job(job_id) for _ in range(50)))
    assert len(records) == 50
    assert sim.requests[TOKEN_ROUTE] == 1
    assert sim.tokens_issued == 1
    assert sim.requests[GET_JOB] == 50


async def test_wrong_credentials_are_forbidden_without_leaking_the_secret(
    make_client: MakeClient, sim: Simulator
) -> None:
    secret = "wrong-s3cret-do-not-print"
    client = await make_client(sim, secret=secret)
    with pytest.raises(Forbidden) as caught:
        await client.list_pcm_jobs()
    assert caught.value.status == 401
    assert "POST /oauth/access_token" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value.args)
    assert sim.tokens_issued == 0
    assert sim.requests[LIST_JOBS] == 0


# Retries


async def test_429_then_success(make_client: MakeClient, sim: Simulator) -> None:
    sim.bulk_create(3)
    client = await make_client(sim)
    faults_for_first(sim, 2, rate_429=1)
    page = await client.list_pcm_jobs()
    assert len(page.records) == 3
    assert sim.requests[LIST_JOBS] == 3
    assert client.requests == 3


async def test_retry_after_is_honoured(make_client: MakeClient, sim: Simulator) -> None:
    sim.bulk_create(3)
    client = await make_client(sim)
    faults_for_first(sim, 1, rate_429=1, retry_after=0.2)
    await client.list_pcm_jobs()
    first, second = arrivals(sim, LIST_JOBS)
    # Without the header the backoff would be at most backoff_base (0.01 s).
    assert second - first >= 0.2


async def test_500_then_success(make_client: MakeClient, sim: Simulator) -> None:
    job_id = sim.create_job()
    client = await make_client(sim)
    faults_for_first(sim, 1, rate_500=1)
    assert (await client.get_pcm_job(job_id))["id"] == job_id
    assert sim.requests[GET_JOB] == 2


async def test_slow_reply_times_out_then_succeeds(make_client: MakeClient, sim: Simulator) -> None:
    job_id = sim.create_job()
    client = await make_client(sim, timeout=0.2)
    await client.get_pcm_job(job_id)  # the token first, so the timeout hits the API request
    faults_for_first(sim, 1, rate_slow=1, slow_seconds=0.6)
    assert (await client.get_pcm_job(job_id))["id"] == job_id
    assert sim.requests[GET_JOB] == 3


async def test_exhausted_retries_name_method_path_and_request_id(
    make_client: MakeClient, sim: Simulator
) -> None:
    job_id = sim.create_job()
    client = await make_client(sim, max_retries=2)
    sim.set_faults(rate_500=1)
    with pytest.raises(TransientError) as caught:
        await client.get_pcm_job(job_id)
    error = caught.value
    assert sim.requests[GET_JOB] == 3
    assert error.status == 500 and error.retryable
    assert error.request_id is not None
    uuid.UUID(error.request_id)
    message = str(error)
    assert f"GET /pcm/jobs/{job_id}" in message
    assert error.request_id in message


@pytest.mark.parametrize("fault", ["rate_429", "rate_500"])
async def test_a_transient_token_failure_is_retried(
    make_client: MakeClient, sim: Simulator, fault: str
) -> None:
    job_id = sim.create_job()
    client = await make_client(sim)
    sim.set_faults(faults_on_token=True)
    faults_for_first(sim, 1, token=True, **{fault: 1})
    assert (await client.get_pcm_job(job_id))["id"] == job_id
    assert sim.tokens_issued == 1


def _app_answering(status: int, body: str, calls: list[str]) -> web.Application:
    """A store whose token endpoint works and whose every API request gets `status`/`body`."""

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})

    async def api(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/oauth/access_token", token)
    app.router.add_get("/{tail:.*}", api)
    return app


async def test_403_is_not_retried(make_client: MakeClient) -> None:
    calls: list[str] = []
    body = '{"errors":[{"status":"403","title":"Forbidden","detail":"Administrators only"}]}'
    client = await make_client(_app_answering(403, body, calls))
    with pytest.raises(Forbidden) as caught:
        await client.get_pcm_job("abc")
    assert calls == ["/pcm/jobs/abc"]
    assert caught.value.status == 403
    assert "Administrators only" in str(caught.value)


async def test_404_is_not_found(make_client: MakeClient, sim: Simulator) -> None:
    pcm, v2 = sim.create_job(), sim.create_job("v2")
    client = await make_client(sim)
    with pytest.raises(NotFound):
        await client.get_pcm_job("no-such-job")
    with pytest.raises(NotFound):
        await client.get_v2_job(pcm)
    sim.expire(v2)
    with pytest.raises(NotFound):
        await client.get_v2_job(v2)
    assert sim.requests[GET_JOB] == 1
    assert sim.requests["GET /v2/jobs/{id}"] == 2


async def test_malformed_json_is_a_malformed_response(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.bulk_create(10)
    client = await make_client(sim)
    sim.set_faults(rate_malformed=1)
    for _ in range(4):  # both kinds: a proxy's HTML page and truncated JSON
        with pytest.raises(MalformedResponse, match="not valid JSON"):
            await client.list_pcm_jobs()


@pytest.mark.parametrize("body", ['{"items": []}', '{"data": {"id": "x"}}', "[]", "null"], ids=str)
async def test_list_reply_without_a_data_list_is_malformed(
    make_client: MakeClient, body: str
) -> None:
    calls: list[str] = []
    client = await make_client(_app_answering(200, body, calls))
    with pytest.raises(MalformedResponse, match="`data` list"):
        await client.list_pcm_jobs()
    with pytest.raises(MalformedResponse, match="`data` list"):
        await client.list_v2_jobs()
    assert len(calls) == 2


async def test_object_reply_without_a_data_object_is_malformed(make_client: MakeClient) -> None:
    client = await make_client(_app_answering(200, '{"data": []}', []))
    with pytest.raises(MalformedResponse, match="`data` object"):
        await client.get_pcm_job("abc")


# Pagination


async def test_pcm_pages_give_every_job_once(make_client: MakeClient, sim: Simulator) -> None:
    ids = sim.bulk_create(230)
    client = await make_client(sim)
    seen: list[str] = []
    sizes = []
    for offset in range(0, 300, 100):
        page = await client.list_pcm_jobs(offset, 100)
        assert page.total == 230
        sizes.append(len(page.records))
        seen.extend(record["id"] for record in page.records)
    assert sizes == [100, 100, 30]
    assert len(seen) == len(set(seen)) == 230
    assert set(seen) == set(ids)


async def test_job_errors_are_collected_across_pages(
    make_client: MakeClient, sim: Simulator
) -> None:
    job_id = sim.create_job(status="failed")
    messages = [f"row {n}: slug must be URL compatible." for n in range(250)]
    sim.add_errors(job_id, messages)
    client = await make_client(sim)
    first = await client.get_pcm_job_errors(job_id, 100)
    assert first == [{"message": m} for m in messages[:100]]
    assert sim.requests["GET /pcm/jobs/{id}/errors"] == 1
    every = await client.get_pcm_job_errors(job_id, 300)
    assert every == [{"message": m} for m in messages]
    assert sim.requests["GET /pcm/jobs/{id}/errors"] == 1 + 3


async def test_v2_list_get_and_file(make_client: MakeClient, sim: Simulator) -> None:
    done = sim.create_job("v2", status="success")
    pending = sim.create_job("v2")
    sim.create_job("pcm")
    client = await make_client(sim)
    listed = await client.list_v2_jobs()
    assert {record["id"] for record in listed} == {done, pending}
    record = await client.get_v2_job(done)
    assert record["id"] == done and record["status"] == "complete"
    assert await client.get_v2_job_file(done) == f"https://files.example.com/exports/{done}.csv"
    with pytest.raises(NotFound):
        await client.get_v2_job_file(pending)


# Rate limit


async def test_rate_limit_holds_at_the_server(make_client: MakeClient, sim: Simulator) -> None:
    job_id = sim.create_job()
    client = await make_client(sim, max_requests_per_second=10)
    await asyncio.gather(*(client.get_pcm_job(job_id) for _ in range(40)))
    times = arrivals(sim, GET_JOB)
    assert len(times) == 40
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 11


# A whole store


async def test_client_walks_every_job(make_client: MakeClient, sim: Simulator) -> None:
    pcm = set(sim.bulk_create(480)) | {sim.create_job(status="started") for _ in range(20)}
    v2 = set(sim.bulk_create(20, source="v2"))
    client = await make_client(sim)
    seen: list[str] = []
    offset = 0
    while True:
        page = await client.list_pcm_jobs(offset, 100)
        seen.extend(record["id"] for record in page.records)
        offset += len(page.records)
        if len(page.records) < 100:
            break
    assert len(seen) == len(set(seen)) == 500
    assert set(seen) == pcm
    assert {record["id"] for record in await client.list_v2_jobs()} == v2
