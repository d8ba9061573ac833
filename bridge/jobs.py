"""One normalised Job model for PCM (`/pcm/jobs`) and legacy v2 (`/v2/jobs`) records."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Literal, get_args

Source = Literal["pcm", "v2"]
SOURCES: tuple[Source, ...] = get_args(Source)


class JobStatus(StrEnum):
    """Every status the bridge names. A job has one of the first five; STALLED names an event
    only (a job still pending or started for too long), never what the API says of a job."""

    PENDING = "pending"
    STARTED = "started"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STALLED = "stalled"


STATUSES = tuple(status for status in JobStatus if status is not JobStatus.STALLED)
TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED})
# Where each status stands in a job's life: a job never moves to a lower rank.
RANK = {JobStatus.PENDING: 0, JobStatus.STARTED: 1, **dict.fromkeys(TERMINAL, 2)}
# Status words seen across docs, SDKs and specs, lower-cased, mapped to the five above.
_STATUS_WORDS = {
    **{status.value: status for status in STATUSES},
    "processing": JobStatus.STARTED,
    "complete": JobStatus.SUCCESS,
    "completed": JobStatus.SUCCESS,
    "canceled": JobStatus.CANCELLED,
}

_TIMESTAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}:\d{2})(?:[.,](?P<frac>\d+))?"
    r"\s*(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?(?:\s+[A-Za-z]{1,5})?$"
)


class JobParseError(ValueError):
    """A job record from the API that cannot be understood; names the job id when known."""

    def __init__(self, job_id: str | None, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id or '<no id>'}: {reason}")


def parse_timestamp(value: Any) -> datetime | None:
    """Parse every timestamp shape the API is known to send into an aware UTC datetime.

    None, "" and Go's zero time (year 1) mean "not set" and give None.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string, got {type(value).__name__}")
    return _parse_timestamp_text(value)


# Every poll cycle reads its first page again, and a steady cycle reads little else: the
# same strings come back each second, so each is parsed once (datetimes are immutable).
@functools.lru_cache(maxsize=8192)
def _parse_timestamp_text(value: str) -> datetime | None:
    match = _TIMESTAMP.match(value.strip())
    if match is None:
        raise ValueError(f"unrecognised timestamp {value!r}")
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    zone = match["zone"] or "Z"
    try:
        naive = datetime.fromisoformat(f"{match['date']}T{match['time']}.{frac}")
    except ValueError as exc:
        raise ValueError(f"unrecognised timestamp {value!r}") from exc
    if naive.year == 1:
        return None
    return naive.replace(tzinfo=_zone(zone)).astimezone(UTC)


def _zone(text: str) -> timezone:
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def format_timestamp(value: datetime | None) -> str | None:
    """ISO-8601 UTC with millisecond precision and a `Z`, or None."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # parsed timestamps are UTC already: skip the conversion
        value = value.astimezone(UTC)
    # isoformat(timespec="milliseconds") with a Z, in two thirds of its time (hot path).
    v = value
    ms = v.microsecond // 1000
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        v.year, v.month, v.day, v.hour, v.minute, v.second, ms,
    )  # fmt: skip


def format_epoch(seconds: float | None) -> str | None:
    """Seconds since the epoch, as format_timestamp writes them."""
    return None if seconds is None else format_timestamp(datetime.fromtimestamp(seconds, UTC))


def now_iso() -> str:
    """This moment, as format_timestamp writes it."""
    return format_timestamp(datetime.now(UTC)) or ""


def normalise_status(value: Any) -> JobStatus:
    if not isinstance(value, str) or not value:
        raise ValueError(f"status must be a non-empty string, got {value!r}")
    status = _STATUS_WORDS.get(value.strip().lower())
    if status is None:
        raise ValueError(f"unknown status {value!r}")
    return status


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the bridge understands it, whichever API it came from."""

    id: str
    source: Source
    type: str
    status: JobStatus
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # v2 only: the job's `error` text
    file_href: str | None = None  # v2 only: `link.href` of a finished export

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def version(self) -> int:
        """`updated_at` in microseconds since the epoch (0 when unset): a stale-check key."""
        if self.updated_at is None:
            return 0
        return int(self.updated_at.timestamp() * 1_000_000)

    def to_dict(self) -> dict[str, Any]:
        """The normalised job of an event's `data.job`."""
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "created_at": format_timestamp(self.created_at),
            "started_at": format_timestamp(self.started_at),
            "completed_at": format_timestamp(self.completed_at),
            "updated_at": format_timestamp(self.updated_at),
            "meta": self.meta,
        }

    def file_locations(self) -> list[str]:
        """Where a finished export's files are, when the API says so."""
        if self.status != JobStatus.SUCCESS:
            return []
        if self.source == "pcm":
            locations = self.meta.get("file_locations")
            return [str(x) for x in locations] if isinstance(locations, list) else []
        if self.type == "order_export":
            return [self.file_href or f"/v2/jobs/{self.id}/file"]
        return []


def _job_id(record: Any) -> str | None:
    # Printable: no control character (the store frames jobs with two: bridge.storelua.OBSERVE).
    job_id = record.get("id") if isinstance(record, dict) else None
    if isinstance(job_id, str) and job_id and job_id.isprintable():
        return job_id
    return None


def parse_pcm_job(record: Any) -> Job:
    """A `pim-job` resource from `/pcm/jobs` into a Job. Raises JobParseError."""
    job_id = _job_id(record)
    if job_id is None:
        raise JobParseError(None, "record has no string `id`")
    try:
        attributes = record.get("attributes")
        if not isinstance(attributes, dict):
            raise ValueError("`attributes` is missing or not an object")
        job_type = attributes.get("type")
        if not isinstance(job_type, str) or not job_type:
            raise ValueError("`attributes.type` is missing")
        meta = record.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("`meta` is not an object")
        return Job(
            id=job_id,
            source="pcm",
            type=job_type,
            status=normalise_status(attributes.get("status")),
            created_at=parse_timestamp(attributes.get("created_at")),
            updated_at=parse_timestamp(attributes.get("updated_at")),
            started_at=parse_timestamp(attributes.get("started_at")),
            completed_at=parse_timestamp(attributes.get("completed_at")),
            meta=meta,
        )
    except ValueError as exc:
        raise JobParseError(job_id, str(exc)) from None


def parse_v2_job(record: Any) -> Job:
    """A `job` resource from `/v2/jobs` into a Job. Raises JobParseError."""
    job_id = _job_id(record)
    if job_id is None:
        raise JobParseError(None, "record has no string `id`")
    try:
        job_type = record.get("job_type")
        if not isinstance(job_type, str) or not job_type:
            raise ValueError("`job_type` is missing")
        timestamps = record.get("timestamps") or {}
        if not isinstance(timestamps, dict):
            raise ValueError("`timestamps` is not an object")
        link = record.get("link")
        href = link.get("href") if isinstance(link, dict) else None
        error = record.get("error")
        status = normalise_status(record.get("status"))
        return Job(
            id=job_id,
            source="v2",
            type=job_type,
            status=status,
            created_at=parse_timestamp(timestamps.get("created_at")),
            updated_at=parse_timestamp(timestamps.get("updated_at")),
            meta={},
            error=str(error) if error else None,
            file_href=href if isinstance(href, str) and href else None,
        )
    except ValueError as exc:
        raise JobParseError(job_id, str(exc)) from None


def parse_job(source: Source, record: Any) -> Job:
    return parse_pcm_job(record) if source == "pcm" else parse_v2_job(record)
