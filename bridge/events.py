"""Job events: stable ids, type names, and the CloudEvents 1.0 envelope consumers receive."""

from __future__ import annotations

import json
import uuid
from typing import Any

from bridge.jobs import JobStatus

# Fixed namespace: every replica of the bridge derives the same id for the same transition.
_NAMESPACE = uuid.UUID("6f0b5d1e-8a53-4c1e-9a63-0c2f3b7e6a10")

EVENT_STATUSES = tuple(JobStatus)


def event_id(store: str, source: str, job_id: str, status: str) -> str:
    """Same store, source, job and status give the same id, wherever it is computed."""
    return str(uuid.uuid5(_NAMESPACE, f"{store}/{source}/{job_id}/{status}"))


def stalled_event_id(store: str, source: str, job_id: str, status: str) -> str:
    """The id of a job's `stalled` event while it is in `status`: one per open phase."""
    return event_id(store, source, job_id, f"{JobStatus.STALLED}-{status}")


def event_type(source: str, status: str) -> str:
    return f"com.elasticpath.{source}.job.{status}"


def event_source(store: str, source: str) -> str:
    return f"/stores/{store}/{source}/jobs"


def build_event(
    *,
    id: str,
    store: str,
    source: str,
    status: str,
    previous_status: str | None,
    sequence: int,
    time: str,
    job: dict[str, Any],
    errors: list[dict[str, Any]] | None = None,
    file_locations: list[str] | None = None,
) -> dict[str, Any]:
    """The CloudEvent (structured JSON mode) of one job transition."""
    data: dict[str, Any] = {
        "store": store,
        "source": source,
        "status": status,
        "previous_status": previous_status,
        "job": job,
    }
    if errors:
        data["errors"] = errors
    if file_locations:
        data["file_locations"] = file_locations
    return {
        "specversion": "1.0",
        "id": id,
        "source": event_source(store, source),
        "type": event_type(source, status),
        "subject": job["id"],
        "time": time,
        "datacontenttype": "application/json",
        "sequence": str(sequence),
        "data": data,
    }


def encode(event: dict[str, Any]) -> bytes:
    """The exact bytes that are sent and signed."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
