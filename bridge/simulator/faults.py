"""Fault injection: what goes wrong and how often, applied to records and to HTTP replies."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bridge.simulator.replies import json_error


@dataclass(slots=True)
class Faults:
    """What goes wrong, and how often: rates are probabilities per request (0..1)."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 2.0
    rate_malformed: float = 0.0
    rate_invalid_record: float = 0.0
    retry_after: float | None = None
    token_lifetime: float = 3600.0
    faults_on_token: bool = False
    # An API that ignores `page[offset]`: every page of /pcm/jobs is the first one.
    ignore_offset: bool = False
    # Jobs whose GET /pcm/jobs/{id} and /v2/jobs/{id} answer 400 (a poison job).
    bad_request_jobs: list[str] = field(default_factory=list)


_FLAGS = ("faults_on_token", "ignore_offset")


def check_fault(name: str, value: Any) -> Any:
    """`value` for the `Faults` field `name`, checked; ValueError names what is wrong."""
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if name == "bad_request_jobs":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("bad_request_jobs must be a list of job ids")
        return list(value)
    if name == "retry_after" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name.startswith("rate_") and not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    if name == "token_lifetime" and value <= 0:
        raise ValueError(f"token_lifetime must be positive, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return float(value)


def corrupt_records(
    faults: Faults, rng: random.Random, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The invalid-record fault: one record a strict parser must refuse."""
    if not records or rng.random() >= faults.rate_invalid_record:
        return records
    broken = records[rng.randrange(len(records))]
    if "attributes" in broken:
        holder, stamps = broken["attributes"], broken["attributes"]
    else:
        holder, stamps = broken, broken["timestamps"]
    if rng.random() < 0.5:
        holder["status"] = "???"
    else:
        stamps["created_at"] = "yesterday-ish"
    return records


def bad_request(faults: Faults, job_id: str) -> web.Response | None:
    """The poison-job fault: a 400 for the GET of a job listed in `bad_request_jobs`."""
    if job_id not in faults.bad_request_jobs:
        return None
    return json_error(
        400,
        status="400",
        title="Bad Request",
        detail="The request could not be processed.",
        request_id=str(uuid.uuid4()),
    )


async def early_fault(faults: Faults, rng: random.Random, route: str) -> web.Response | None:
    """Delay, then maybe a 429 or a 500 in place of the reply to `route`."""
    if rng.random() < faults.rate_slow:
        await asyncio.sleep(faults.slow_seconds)
    if rng.random() < faults.rate_429:
        response = json_error(429, status=429, title="Too Many Requests")
        if faults.retry_after is not None:
            response.headers["Retry-After"] = f"{faults.retry_after:g}"
        return response
    if rng.random() < faults.rate_500:
        # PXM writes the status as a string, the legacy v2 API as a number.
        status: int | str = 500 if " /v2/" in route else "500"
        return json_error(
            500,
            status=status,
            title="Internal Server Error",
            detail="There was an internal server error, you can report with your request id.",
            request_id=str(uuid.uuid4()),
        )
    return None


def malformed(
    faults: Faults, rng: random.Random, response: web.StreamResponse
) -> web.StreamResponse:
    """The malformed fault: a 200 whose body is not the JSON it should be."""
    body = getattr(response, "body", None)
    if response.status != 200 or not isinstance(body, bytes):
        return response
    if rng.random() >= faults.rate_malformed:
        return response
    if rng.random() < 0.5:
        # A proxy's error page behind a 200, as load balancers sometimes send.
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return web.Response(status=200, body=page, content_type="text/html")
    return web.Response(status=200, body=body[: len(body) // 2], content_type="application/json")
