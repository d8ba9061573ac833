"""The fake Elastic Path Jobs API, exercised over real HTTP against the seeds' shapes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.jobs import JobParseError, parse_pcm_job, parse_timestamp, parse_v2_job
from bridge.simulator import PCM_TYPES, Simulator, format_timestamp, make_app

Client = TestClient[web.Request, web.Application]

UNAUTHORIZED = {"errors": [{"status": 401, "title": "Unable to validate access token"}]}
PCM_NOT_FOUND = {"errors": [{"title": "Not Found", "status": "404"}]}
# seeds/001: the "Product Import Job" example of Get a Job.
SEED_PCM_JOB = {
    "type": "pim-job",
    "id": "1ea62172-57f6-45e5-a708-ab5bd634e3f9",
    "attributes": {
        "completed_at": "2024-01-05T13:46:42.142Z",
        "created_at": "2024-01-05T13:46:41.695Z",
        "started_at": "2024-01-05T13:46:42.07Z",
        "status": "success",
        "type": "product-import",
        "updated_at": "2024-01-05T13:46:42.07Z",
    },
    "meta": {"x_request_id": "7e832a26-d615-4305-b26a-e33c9c2fc06a"},
}
# seeds/004: the second example of Get a Job (legacy v2).
SEED_V2_JOB = {
    "id": "974c9db4-38da-4dbf-90c2-33eed5f3e77c",
    "type": "job",
    "job_type": "order_export",
    "status": "failed",
    "error": "No results matched the supplied filter",
    "link": {"href": ""},
    "links": {
        "self": "https://useast.api.elasticpath.com/v2/jobs/974c9db4-38da-4dbf-90c2-33eed5f3e77c"
    },
    "timestamps": {
        "created_at": "2018-10-04T11:08:49.156490335Z",
        "updated_at": "2018-10-04T11:08:49.162867081Z",
    },
}


@pytest.fixture
def sim() -> Simulator:
    return Simulator(seed=7)


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]], sim: Simulator
) -> Client:
    return await aiohttp_client(make_app(sim))


async def get_token(client: Client, secret: str = "sim-secret") -> Any:
    form = {"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": secret}
    response = await client.post("/oauth/access_token", data=form)
    return response.status, await response.json()


@pytest.fixture
async def auth(client: Client) -> dict[str, str]:
    _, body = await get_token(client)
    return {"Authorization": f"Bearer {body['access_token']}"}


async def get_json(client: Client, path: str, headers: dict[str, str], status: int = 200) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    return await response.json()


def keys(value: Any) -> Any:
    """The nested key structure of a JSON document, to compare shapes and not values."""
    if isinstance(value, dict):
        return {key: keys(item) for key, item in value.items()}
    return None


# Tokens


async def test_token_reply_is_flat_like_every_sdk(client: Client) -> None:
    status, body = await get_token(client)
    assert status == 200
    assert list(body) == ["expires", "identifier", "expires_in", "access_token", "token_type"]
    assert body["identifier"] == "client_credentials"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert abs(body["expires"] - (time.time() + 3600)) < 5


async def test_token_reply_can_be_wrapped_like_the_openapi_spec(
    client: Client, sim: Simulator
) -> None:
    sim.configure(token_reply_wrapped=True)
    status, body = await get_token(client)
    assert status == 200
    assert set(body) == {"data"}
    assert body["data"]["token_type"] == "Bearer"
    assert sim.token_valid(body["data"]["access_token"])


async def test_bad_credentials_get_401(client: Client, sim: Simulator) -> None:
    status, body = await get_token(client, secret="wrong")
    assert status == 401
    assert body["errors"][0]["status"] == 401
    assert sim.tokens_issued == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}],
    ids=["missing", "unknown", "not-bearer"],
)
@pytest.mark.parametrize("path", ["/pcm/jobs", "/pcm/jobs/some-id", "/v2/jobs"])
async def test_requests_without_a_valid_token_get_the_seed_401(
    client: Client, headers: dict[str, str], path: str
) -> None:
    assert await get_json(client, path, headers, status=401) == UNAUTHORIZED


async def test_expired_token_gets_401(client: Client, sim: Simulator) -> None:
    sim.configure(token_lifetime=0.2)
    _, body = await get_token(client)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    await get_json(client, "/pcm/jobs", headers)
    await asyncio.sleep(0.3)
    assert await get_json(client, "/pcm/jobs", headers, status=401) == UNAUTHORIZED


# Records and their lifecycle


@pytest.mark.parametrize("style", ["iso", "go", "naive", "mixed"])
async def test_pcm_records_parse_in_every_timestamp_style(
    client: Client, sim: Simulator, auth: dict[str, str], style: str
) -> None:
    sim.configure(timestamp_style=style)
    for job_type in PCM_TYPES:
        for status in ("pending", "started", "success", "failed", "cancelled"):
            sim.create_job(job_type=job_type, status=status)
    body = await get_json(client, "/pcm/jobs?page[limit]=100", auth)
    jobs = [parse_pcm_job(record) for record in body["data"]]
    assert len(jobs) == len(PCM_TYPES) * 5
    for job in jobs:
        assert job.created_at is not None and job.updated_at is not None
        assert (job.started_at is None) == (job.status in ("pending", "cancelled"))
        assert (job.completed_at is None) == (job.status in ("pending", "started"))


def test_timestamp_styles_match_the_seeds() -> None:
    ns = 1_704_462_402_070_000_000  # 2024-01-05T13:46:42.07Z, as in seeds/001
    assert format_timestamp(ns, "iso") == "2024-01-05T13:46:42.07Z"
    assert format_timestamp(ns, "go") == "2024-01-05 13:46:42.07 +0000 UTC"
    assert format_timestamp(ns, "naive") == "2024-01-05T13:46:42"
    assert format_timestamp(ns + 335, "nano") == "2024-01-05T13:46:42.070000335Z"
    assert format_timestamp(ns - 70_000_000, "iso") == "2024-01-05T13:46:42Z"
    for style in ("iso", "go", "naive", "nano"):
        assert parse_timestamp(format_timestamp(ns, style)) == datetime(
            2024, 1, 5, 13, 46, 42, 0 if style == "naive" else 70_000, tzinfo=UTC
        )


async def test_pcm_completion_does_not_move_updated_at(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    job_id = sim.create_job(job_type="product-import")

    async def attributes() -> dict[str, Any]:
        body = await get_json(client, f"/pcm/jobs/{job_id}", auth)
        return body["data"]["attributes"]

    pending = await attributes()
    assert pending["status"] == "pending"
    assert pending["updated_at"] == pending["created_at"]
    assert pending["started_at"] is None and pending["completed_at"] is None

    sim.set_status(job_id, "started")
    started = await attributes()
    assert started["started_at"] is not None
    assert started["updated_at"] == started["started_at"]
    assert started["completed_at"] is None

    sim.set_status(job_id, "success")
    done = await attributes()
    assert done["updated_at"] == started["updated_at"] == done["started_at"]
    assert parse_timestamp(done["completed_at"]) > parse_timestamp(done["started_at"])


async def test_pending_to_failed_stamps_the_skipped_start(sim: Simulator) -> None:
    job_id = sim.create_job()
    sim.set_status(job_id, "failed")
    job = parse_pcm_job(sim.record(job_id))
    assert job.started_at is not None and job.updated_at == job.started_at
    assert job.completed_at > job.started_at


async def test_started_null_quirk(sim: Simulator) -> None:
    sim.configure(started_null_quirk=True)
    job_id = sim.create_job(status="started")
    attributes = sim.record(job_id)["attributes"]
    assert attributes["status"] == "started"
    assert attributes["started_at"] is None
    assert attributes["updated_at"] != attributes["created_at"]
    sim.set_status(job_id, "success")
    assert sim.record(job_id)["attributes"]["started_at"] is not None


async def test_illegal_transitions_need_force(sim: Simulator) -> None:
    job_id = sim.create_job(status="success")
    for status in ("pending", "started", "failed", "cancelled"):
        with pytest.raises(ValueError):
            sim.set_status(job_id, status)
    sim.set_status(job_id, "pending", force=True)
    attributes = sim.record(job_id)["attributes"]
    assert attributes["status"] == "pending"
    assert attributes["started_at"] is None and attributes["completed_at"] is None
    sim.set_status(job_id, "started")
    with pytest.raises(ValueError, match="only pending"):
        sim.set_status(job_id, "cancelled")
    with pytest.raises(ValueError, match="status must be one of"):
        sim.set_status(job_id, "exploded")
    with pytest.raises(KeyError):
        sim.set_status("no-such-job", "started")


async def test_job_meta_per_type(sim: Simulator) -> None:
    export = sim.create_job(job_type="product-export", meta={"filter": "eq(sku,product-1)"})
    meta = sim.record(export)["meta"]
    assert list(meta) == ["file_locations", "filter", "x_request_id"]
    assert meta["file_locations"] is None
    sim.set_status(export, "started")
    assert sim.record(export)["meta"]["file_locations"] is None
    sim.set_status(export, "success")
    assert sim.record(export)["meta"]["file_locations"] == [
        f"https://files.example.com/exports/{export}.csv"
    ]
    assert (
        parse_pcm_job(sim.record(export)).file_locations()
        == sim.record(export)["meta"]["file_locations"]
    )
    duplicate = sim.record(sim.create_job(job_type="hierarchy-duplicate"))
    assert set(duplicate["meta"]) == {"copied_from", "hierarchy_id", "x_request_id"}


async def test_pcm_record_matches_the_seed_shape(sim: Simulator) -> None:
    record = sim.record(sim.create_job(job_type="product-import", status="success"))
    assert keys(record) == keys(SEED_PCM_JOB)
    assert list(record["attributes"]) == list(SEED_PCM_JOB["attributes"])


@pytest.mark.parametrize(
    ("style", "words"),
    [
        ("lower", ["pending", "processing", "complete"]),
        ("upper", ["PENDING", "STARTED", "SUCCESS"]),
    ],
)
async def test_v2_records_parse_in_every_status_style(
    client: Client, sim: Simulator, auth: dict[str, str], style: str, words: list[str]
) -> None:
    sim.configure(v2_status_style=style)
    job_id = sim.create_job("v2", "order_export")
    seen = []
    for step in ("pending", "started", "success"):
        if step != "pending":
            sim.set_status(job_id, step)
        record = (await get_json(client, f"/v2/jobs/{job_id}", auth))["data"]
        assert keys(record) == keys(SEED_V2_JOB)
        job = parse_v2_job(record)
        assert job.status == step
        seen.append((record["status"], record["timestamps"]["updated_at"], job))
    assert [word for word, _, _ in seen] == words
    assert seen[0][1] == "0001-01-01T00:00:00Z"
    assert seen[0][2].updated_at is None
    assert seen[1][2].updated_at < seen[2][2].updated_at  # v2 moves updated_at every time
    created = record["timestamps"]["created_at"]
    assert len(created.split(".")[1].rstrip("Z")) > 3  # finer than milliseconds
    assert record["links"]["self"] == str(client.make_url(f"/v2/jobs/{job_id}"))
    assert seen[2][2].file_href == record["link"]["href"] != ""


async def test_v2_failure_file_and_list(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    failed = sim.create_job("v2", status="failed")
    done = sim.create_job("v2", status="success")
    pending = sim.create_job("v2")
    sim.create_job("pcm")
    body = await get_json(client, "/v2/jobs", auth)
    assert set(body) == {"data"}
    assert [record["id"] for record in body["data"]] == [failed, done, pending]
    assert parse_v2_job(body["data"][0]).error == "No results matched the supplied filter"
    file_body = await get_json(client, f"/v2/jobs/{done}/file", auth)
    assert file_body == {"data": {"href": f"https://files.example.com/exports/{done}.csv"}}
    for job_id in (failed, pending, "nope"):
        body = await get_json(client, f"/v2/jobs/{job_id}/file", auth, status=404)
        assert body["errors"][0]["status"] == 404
    with pytest.raises(ValueError):
        sim.set_status(pending, "cancelled")


# Pagination and order


@pytest.mark.parametrize("order", ["newest", "oldest"])
async def test_pages_of_100_cover_every_job_once(
    client: Client, sim: Simulator, auth: dict[str, str], order: str
) -> None:
    sim.configure(order=order)
    created = [sim.create_job(job_type=PCM_TYPES[i % 5]) for i in range(230)]
    sim.create_job("v2")  # never listed under /pcm/jobs
    seen: list[str] = []
    for offset in (0, 100, 200):
        body = await get_json(client, f"/pcm/jobs?page[limit]=100&page[offset]={offset}", auth)
        assert body["meta"]["results"]["total"] == 230
        seen += [record["id"] for record in body["data"]]
    assert seen == (created[::-1] if order == "newest" else created)
    assert body["links"]["next"] is None
    assert body["links"]["prev"].endswith("page[offset]=100&page[limit]=100")
    stamps = [parse_timestamp(sim.record(job_id)["attributes"]["created_at"]) for job_id in seen]
    assert stamps == sorted(stamps, reverse=order == "newest")


async def test_default_limit_and_links(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    sim.bulk_create(60)
    body = await get_json(client, "/pcm/jobs", auth)
    assert len(body["data"]) == 25
    assert list(body) == ["data", "meta", "links"]
    assert body["links"]["prev"] is None
    assert body["links"]["next"].endswith("page[offset]=25&page[limit]=25")
    assert body["links"]["last"].endswith("page[offset]=50&page[limit]=25")
    sim.configure(include_links=False)
    body = await get_json(client, "/pcm/jobs?page[offset]=50", auth)
    assert list(body) == ["data", "meta"]
    assert len(body["data"]) == 10


@pytest.mark.parametrize(
    "query", ["page[limit]=101", "page[limit]=0", "page[limit]=x", "page[offset]=-1"]
)
async def test_bad_page_parameters_get_400(
    client: Client, auth: dict[str, str], query: str
) -> None:
    body = await get_json(client, f"/pcm/jobs?{query}", auth, status=400)
    assert body["errors"][0]["status"] == "400"
    assert body["errors"][0]["title"] == "Bad Request"


async def test_shuffled_order_still_holds_the_full_set(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    sim.configure(order="shuffled")
    created = set(sim.bulk_create(100))
    first = await get_json(client, "/pcm/jobs?page[limit]=100", auth)
    second = await get_json(client, "/pcm/jobs?page[limit]=100", auth)
    ids = [[record["id"] for record in body["data"]] for body in (first, second)]
    assert set(ids[0]) == set(ids[1]) == created
    assert first["meta"]["results"]["total"] == 100
    assert ids[0] != ids[1]  # a fresh shuffle per request


async def test_bulk_create_makes_parseable_finished_jobs(sim: Simulator) -> None:
    ids = sim.bulk_create(1000)
    assert len(sim.jobs) == len(set(ids)) == 1000
    jobs = [parse_pcm_job(sim.render(job)) for job in sim.pcm_jobs_in_order()]
    assert {job.type for job in jobs} == set(PCM_TYPES)
    assert all(job.status == "success" and job.updated_at == job.started_at for job in jobs)
    assert jobs[0].id == ids[-1]  # the newest was made last
    exports = [job for job in jobs if job.type == "product-export"]
    assert all(job.file_locations() for job in exports)
    v2 = sim.bulk_create(10, source="v2", status="pending")
    assert all(parse_v2_job(sim.record(job_id)).updated_at is None for job_id in v2)


# Errors, cancel, 404


async def test_job_errors_paginate(client: Client, sim: Simulator, auth: dict[str, str]) -> None:
    job_id = sim.create_job(status="failed")
    sim.add_errors(job_id, [f"row {n}: slug must be URL compatible." for n in range(30)])
    first = await get_json(client, f"/pcm/jobs/{job_id}/errors", auth)
    rest = await get_json(client, f"/pcm/jobs/{job_id}/errors?page[offset]=25", auth)
    assert first["meta"]["results"]["total"] == 30
    assert len(first["data"]) == 25 and len(rest["data"]) == 5
    error = first["data"][0]
    assert error["type"] == "pim-job-error"
    assert error["attributes"] == {"message": "row 0: slug must be URL compatible."}
    messages = [e["attributes"]["message"] for e in first["data"] + rest["data"]]
    assert messages == [f"row {n}: slug must be URL compatible." for n in range(30)]
    await get_json(client, f"/pcm/jobs/{job_id}/errors?page[limit]=101", auth, status=400)
    assert await get_json(client, "/pcm/jobs/nope/errors", auth, status=404) == PCM_NOT_FOUND


async def test_cancel_only_from_pending(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    pending = sim.create_job()
    response = await client.post(f"/pcm/jobs/{pending}/cancel", headers=auth)
    assert response.status == 200
    job = parse_pcm_job((await response.json())["data"])
    assert job.status == "cancelled" and job.completed_at is not None and job.started_at is None
    again = await client.post(f"/pcm/jobs/{pending}/cancel", headers=auth)
    assert again.status == 422
    assert (await again.json())["errors"][0]["status"] == "422"
    started = sim.create_job(status="started")
    assert (await client.post(f"/pcm/jobs/{started}/cancel", headers=auth)).status == 422
    assert (await client.post("/pcm/jobs/nope/cancel", headers=auth)).status == 404


async def test_not_found_shapes(client: Client, sim: Simulator, auth: dict[str, str]) -> None:
    pcm = sim.create_job()
    v2 = sim.create_job("v2")
    assert await get_json(client, "/pcm/jobs/nope", auth, status=404) == PCM_NOT_FOUND
    assert await get_json(client, f"/pcm/jobs/{v2}", auth, status=404) == PCM_NOT_FOUND
    body = await get_json(client, f"/v2/jobs/{pcm}", auth, status=404)
    assert body["errors"][0]["status"] == 404
    assert body["errors"][0]["title"] == "Resource Not Found"
    sim.expire(pcm)
    assert await get_json(client, f"/pcm/jobs/{pcm}", auth, status=404) == PCM_NOT_FOUND
    with pytest.raises(KeyError):
        sim.expire(pcm)


# Faults


async def test_fault_429_with_and_without_retry_after(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    sim.set_faults(rate_429=1)
    response = await client.get("/pcm/jobs", headers=auth)
    assert response.status == 429
    assert "Retry-After" not in response.headers
    assert await response.json() == {"errors": [{"status": 429, "title": "Too Many Requests"}]}
    sim.set_faults(retry_after=2)
    response = await client.get("/pcm/jobs", headers=auth)
    assert response.headers["Retry-After"] == "2"


async def test_fault_500_has_the_seed_body(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    sim.set_faults(rate_500=1)
    body = await get_json(client, "/pcm/jobs", auth, status=500)
    (error,) = body["errors"]
    assert list(error) == ["status", "title", "detail", "request_id"]
    assert error["status"] == "500"
    assert error["title"] == "Internal Server Error"
    assert error["detail"] == (
        "There was an internal server error, you can report with your request id."
    )
    v2 = await get_json(client, "/v2/jobs", auth, status=500)
    assert v2["errors"][0]["status"] == 500


async def test_fault_malformed_gives_a_200_that_is_not_json(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    sim.bulk_create(5)
    sim.set_faults(rate_malformed=1)
    for _ in range(6):
        response = await client.get("/pcm/jobs", headers=auth)
        assert response.status == 200
        with pytest.raises(ValueError):
            json.loads(await response.text())


async def test_fault_invalid_record_is_refused_by_the_parser(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    sim.bulk_create(10)
    job_id = sim.create_job("v2")
    sim.set_faults(rate_invalid_record=1)
    for _ in range(4):
        body = await get_json(client, "/pcm/jobs", auth)
        refused = []
        for record in body["data"]:
            try:
                parse_pcm_job(record)
            except JobParseError as exc:
                refused.append(exc.job_id)
        assert len(refused) == 1 and refused[0] is not None
        record = (await get_json(client, f"/v2/jobs/{job_id}", auth))["data"]
        with pytest.raises(JobParseError):
            parse_v2_job(record)
    sim.set_faults(rate_invalid_record=0)
    assert all(parse_pcm_job(r) for r in (await get_json(client, "/pcm/jobs", auth))["data"])


async def test_fault_slow(client: Client, sim: Simulator, auth: dict[str, str]) -> None:
    sim.set_faults(rate_slow=1, slow_seconds=0.3)
    started = time.monotonic()
    await get_json(client, "/pcm/jobs", auth)
    assert time.monotonic() - started >= 0.3


async def test_faults_spare_token_and_control_unless_asked(client: Client, sim: Simulator) -> None:
    sim.set_faults(rate_429=1, rate_500=1)
    status, _ = await get_token(client)
    assert status == 200
    assert (await client.get("/_sim/stats")).status == 200
    sim.set_faults(faults_on_token=True)
    status, _ = await get_token(client)
    assert status == 429


def test_set_faults_rejects_bad_values(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_faults(rate_404=1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        sim.set_faults(rate_429=2)
    with pytest.raises(ValueError, match="must be a number"):
        sim.set_faults(slow_seconds="soon")
    assert sim.faults.rate_429 == 0


# Counters


async def test_stats_count_per_route_template(
    client: Client, sim: Simulator, auth: dict[str, str]
) -> None:
    first, second = sim.create_job(), sim.create_job()
    await get_json(client, "/pcm/jobs", auth)
    await get_json(client, f"/pcm/jobs/{first}", auth)
    await get_json(client, f"/pcm/jobs/{second}", auth)
    await get_json(client, f"/pcm/jobs/{second}/errors", auth)
    await get_json(client, "/v2/jobs", auth)
    stats = await get_json(client, "/_sim/stats", {})
    assert stats["requests"] == {
        "POST /oauth/access_token": 1,
        "GET /pcm/jobs": 1,
        "GET /pcm/jobs/{id}": 2,
        "GET /pcm/jobs/{id}/errors": 1,
        "GET /v2/jobs": 1,
    }
    assert stats["tokens_issued"] == 1
    assert stats["jobs"] == 2
    assert sim.requests_in_last(60) == 6
    assert sim.requests_in_last(60, "GET /pcm/jobs/{id}") == 2


# Control endpoints


async def test_control_endpoints_drive_the_simulator(client: Client, sim: Simulator) -> None:
    response = await client.post(
        "/_sim/jobs", json={"source": "pcm", "type": "price-import", "meta": {"filter": "x"}}
    )
    assert response.status == 201
    created = await response.json()
    job_id = created["id"]
    assert parse_pcm_job(created["record"]).type == "price-import"

    response = await client.post(f"/_sim/jobs/{job_id}/status", json={"status": "started"})
    assert (await response.json())["record"]["attributes"]["status"] == "started"
    response = await client.post(f"/_sim/jobs/{job_id}/errors", json={"messages": ["bad row"]})
    assert (await response.json())["errors"] == 1
    response = await client.post(f"/_sim/jobs/{job_id}/status", json={"status": "failed"})
    assert response.status == 200

    response = await client.post("/_sim/bulk", json={"count": 50, "status": "pending"})
    assert (await response.json()) == {"created": 50, "jobs": 51}
    response = await client.post("/_sim/faults", json={"rate_500": 0.5, "retry_after": 1.5})
    assert (await response.json())["faults"]["retry_after"] == 1.5
    response = await client.post("/_sim/settings", json={"order": "oldest", "include_links": False})
    assert (await response.json())["settings"]["order"] == "oldest"
    assert sim.order == "oldest" and sim.faults.rate_500 == 0.5

    assert (await client.delete(f"/_sim/jobs/{job_id}")).status == 200
    assert job_id not in sim.jobs
    assert (await client.post("/_sim/reset")).status == 200
    assert sim.jobs == {} and sim.order == "newest" and sim.faults.rate_500 == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/_sim/jobs", {"source": "v3"}, 400, "source must be one of"),
        ("post", "/_sim/jobs", {"status": "done"}, 400, "status must be one of"),
        ("post", "/_sim/jobs", {"meta": [1]}, 400, "meta must be a dict"),
        ("post", "/_sim/jobs/nope/status", {"status": "started"}, 404, "no job with id"),
        ("post", "/_sim/jobs/{id}/status", {}, 400, "status is required"),
        ("post", "/_sim/jobs/{id}/status", {"status": "cancelled"}, 400, "only pending"),
        ("post", "/_sim/jobs/{id}/errors", {"messages": "x"}, 400, "list of strings"),
        ("delete", "/_sim/jobs/nope", None, 404, "no job with id"),
        ("post", "/_sim/bulk", {"count": "ten"}, 400, "count is required"),
        ("post", "/_sim/faults", {"rate_429": 3}, 400, "between 0 and 1"),
        ("post", "/_sim/settings", {"order": "random"}, 400, "order must be one of"),
        ("post", "/_sim/settings", {"colour": "red"}, 400, "unknown setting"),
        ("post", "/_sim/traffic", {"rate": -1}, 400, "rate is required"),
    ],
)
async def test_bad_control_input_gets_a_readable_message(
    client: Client,
    sim: Simulator,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    job_id = sim.create_job(status="started")
    response = await getattr(client, method)(path.replace("{id}", job_id), json=body)
    assert response.status == status
    assert message in (await response.json())["error"]


async def test_control_body_must_be_json(client: Client) -> None:
    response = await client.post("/_sim/faults", data="rate_429=1")
    assert response.status == 400
    assert "JSON object" in (await response.json())["error"]


# Traffic


async def test_traffic_walks_jobs_to_every_kind_of_end(sim: Simulator) -> None:
    sim.start_traffic(60)
    await asyncio.sleep(1.5)
    await sim.aclose()
    assert sim.traffic_rate == 0
    count = len(sim.jobs)
    assert count > 30
    finished = {}
    for job_id, job in sim.jobs.items():
        parsed = parse_pcm_job(sim.record(job_id)) if job.source == "pcm" else None
        parsed = parsed or parse_v2_job(sim.record(job_id))
        finished.setdefault(parsed.status, []).append(job)
    assert {"success", "failed"} <= set(finished)
    assert {job.type for job in sim.jobs.values()} >= {"product-import", "child-products"}
    assert all(job.errors for job in finished["failed"] if job.source == "pcm")
    await asyncio.sleep(0.2)
    assert len(sim.jobs) == count  # stopped means stopped


async def test_traffic_via_control_stops_on_app_cleanup(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]], sim: Simulator
) -> None:
    client = await aiohttp_client(make_app(sim))
    response = await client.post("/_sim/traffic", json={"rate": 50})
    assert (await response.json()) == {"rate": 50.0}
    await asyncio.sleep(0.3)
    assert sim.jobs
    await client.close()
    count = len(sim.jobs)
    await asyncio.sleep(0.2)
    assert len(sim.jobs) == count
    assert sim.traffic_rate == 0
