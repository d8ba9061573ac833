"""The wire shape of a job: timestamps in each style the API uses, PCM and v2 records."""

from __future__ import annotations

import time
from typing import Any

from bridge.simulator.model import NS_PER_MS, NS_PER_S, RECORD_STYLES, SimJob

TIMESTAMP_STYLES = (*RECORD_STYLES, "mixed")
V2_STATUS_STYLES = ("lower", "upper")
DEFAULT_BASE_URL = "https://useast.api.elasticpath.com"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

_V2_WORDS = {
    "lower": {
        "pending": "pending",
        "started": "processing",
        "success": "complete",
        "failed": "failed",
    },
    "upper": {"pending": "PENDING", "started": "STARTED", "success": "SUCCESS", "failed": "FAILED"},
}


def format_timestamp(ns: int | None, style: str) -> str | None:
    """Render nanoseconds since the epoch the way the API does in `style`.

    iso: `2024-01-05T13:46:42.07Z` (milliseconds, trailing zeros trimmed, as Go prints them);
    go: `2023-10-18 11:39:46.595 +0000 UTC`; naive: `2020-09-22T09:00:00`;
    nano (v2): `2018-10-04T11:08:49.156490335Z`.
    """
    if ns is None:
        return None
    seconds, nanos = divmod(ns, NS_PER_S)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if style == "naive":
        return stamp
    if style == "nano":
        digits = f"{nanos:09d}".rstrip("0")
    else:
        digits = f"{nanos // NS_PER_MS:03d}".rstrip("0")
    fraction = f".{digits}" if digits else ""
    if style == "go":
        return f"{stamp.replace('T', ' ')}{fraction} +0000 UTC"
    return f"{stamp}{fraction}Z"


def render_pcm(job: SimJob, timestamp_style: str, started_null_quirk: bool) -> dict[str, Any]:
    """The job as `GET /pcm/jobs/{id}` puts it in `data`."""
    style = job.style if timestamp_style == "mixed" else timestamp_style
    started = job.started_ns
    if started_null_quirk and job.status == "started":
        started = None
    return {
        "type": "pim-job",
        "id": job.id,
        "attributes": {
            "completed_at": format_timestamp(job.completed_ns, style),
            "created_at": format_timestamp(job.created_ns, style),
            "started_at": format_timestamp(started, style),
            "status": job.status,
            "type": job.type,
            "updated_at": format_timestamp(job.updated_ns, style),
        },
        # Lists are copied so that a caller's edits never reach the stored job.
        "meta": {k: list(v) if isinstance(v, list) else v for k, v in job.meta.items()},
    }


def render_v2(job: SimJob, base_url: str, status_style: str) -> dict[str, Any]:
    """The job as `GET /v2/jobs/{id}` puts it in `data`, its self link under `base_url`."""
    updated = format_timestamp(job.updated_ns, "nano") if job.updated_ns else GO_ZERO_TIME
    return {
        "id": job.id,
        "type": "job",
        "job_type": job.type,
        "status": _V2_WORDS[status_style][job.status],
        "error": job.error,
        "link": {"href": job.href},
        "links": {"self": f"{base_url}/v2/jobs/{job.id}"},
        "timestamps": {
            "created_at": format_timestamp(job.created_ns, "nano"),
            "updated_at": updated,
        },
    }
