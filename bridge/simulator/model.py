"""The in-memory job model: job records and the moves between statuses the real API makes."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from bridge.jobs import STATUSES, normalise_status

log = structlog.get_logger(__name__)

PCM_TYPES = (
    "child-products",
    "product-import",
    "product-export",
    "hierarchy-duplicate",
    "price-import",
)
SOURCES = ("pcm", "v2")
ORDERS = ("newest", "oldest", "shuffled")
# A record's own timestamp style, used when the simulator's style is "mixed".
RECORD_STYLES = ("iso", "go", "naive")
FILE_BASE_URL = "https://files.example.com/exports"
V2_FAILURE = "No results matched the supplied filter"
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PCM_STATUSES = STATUSES
_V2_STATUSES = ("pending", "started", "success", "failed")
# Transitions the real API makes; a jump (pending -> success) stamps the skipped step too.
_PCM_NEXT = {
    "pending": frozenset({"started", "success", "failed", "cancelled"}),
    "started": frozenset({"success", "failed"}),
}
_V2_NEXT = {
    "pending": frozenset({"started", "success", "failed"}),
    "started": frozenset({"success", "failed"}),
}


@dataclass(slots=True)
class SimJob:
    """A job as the simulator keeps it; rendered into the API's shape on every read."""

    id: str
    source: str
    type: str
    status: str
    seq: int
    created_ns: int
    updated_ns: int | None  # None renders as Go's zero time (a pending v2 job)
    started_ns: int | None = None
    completed_ns: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    style: str = "iso"  # this record's style when the simulator's style is "mixed"
    error: str = ""
    href: str = ""
    errors: list[tuple[str, str]] = field(default_factory=list)


def to_ns(value: datetime) -> int:
    """Nanoseconds since the epoch; a naive datetime is UTC."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1) * 1000


def _now_after(job: SimJob) -> int:
    """Now, but never at or before a stamp the job already has."""
    stamps = (job.created_ns, job.updated_ns or 0, job.started_ns or 0, job.completed_ns or 0)
    return max(time.time_ns(), max(stamps) + NS_PER_MS)


def _canonical_status(source: str, status: str) -> str:
    # Callers may use any word docs and SDKs use ("processing", "COMPLETE", ...).
    try:
        word: str = normalise_status(status)
    except ValueError:
        word = status
    allowed = _PCM_STATUSES if source == "pcm" else _V2_STATUSES
    if word not in allowed:
        raise ValueError(f"status must be one of {', '.join(allowed)} for {source} jobs")
    return word


def _apply(job: SimJob, target: str, at: int, step: int) -> None:
    """Stamp a transition to `target` at `at`; `step` separates start and completion."""
    if job.source == "v2":
        # v2 moves updated_at on every change; only a fresh pending job has the zero time.
        job.updated_ns = at
        job.error = V2_FAILURE if target == "failed" else ""
        job.href = f"{FILE_BASE_URL}/{job.id}.csv" if target == "success" else ""
    elif target == "pending":
        job.started_ns = job.completed_ns = None
        job.updated_ns = at
    elif target == "started":
        job.started_ns = job.updated_ns = at
        job.completed_ns = None
    elif target == "cancelled":
        job.completed_ns = at
    else:
        if job.started_ns is None:
            job.started_ns = job.updated_ns = at
            at += step
        # The quirk the bridge exists to survive: completion leaves updated_at alone.
        job.completed_ns = at
    if job.source == "pcm" and job.type == "product-export":
        done = target == "success"
        job.meta["file_locations"] = [f"{FILE_BASE_URL}/{job.id}.csv"] if done else None
    job.status = target


class JobBook:
    """The jobs of one fake store, and every way they are created, moved and forgotten."""

    def __init__(self, rng: random.Random) -> None:
        self.jobs: dict[str, SimJob] = {}
        self._rng = rng
        self._seq = 0
        self._last_created_ns = 0
        self._pcm_sorted: list[SimJob] | None = None

    def new_id(self) -> str:
        # From the seeded generator, so that a seeded run is reproducible end to end.
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def get(self, job_id: str) -> SimJob:
        """The job, or KeyError."""
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _pcm_meta(self, job_type: str, meta: dict[str, Any] | None) -> dict[str, Any]:
        base: dict[str, Any] = {"x_request_id": self.new_id()}
        if job_type == "product-export":
            base["file_locations"] = None
        elif job_type == "hierarchy-duplicate":
            base["copied_from"] = self.new_id()
            base["hierarchy_id"] = self.new_id()
        base.update(meta or {})
        return dict(sorted(base.items()))  # the API sends meta keys sorted

    def create(
        self,
        source: str = "pcm",
        job_type: str | None = None,
        status: str = "pending",
        meta: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Add a job and walk it to `status`; `job_type` defaults to product-import/order_export."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError("meta must be an object")
        job_type = job_type or ("product-import" if source == "pcm" else "order_export")
        target = _canonical_status(source, status)
        if created_at is None:
            # Distinct millisecond stamps keep "newest first" unambiguous on the wire.
            created_ns = max(time.time_ns(), self._last_created_ns + NS_PER_MS)
            self._last_created_ns = created_ns
        else:
            created_ns = to_ns(created_at)
        self._seq += 1
        job = SimJob(
            id=self.new_id(),
            source=source,
            type=job_type,
            status="pending",
            seq=self._seq,
            created_ns=created_ns,
            updated_ns=created_ns if source == "pcm" else None,
            meta=self._pcm_meta(job_type, meta) if source == "pcm" else dict(meta or {}),
            style=self._rng.choice(RECORD_STYLES),
        )
        self.jobs[job.id] = job
        if source == "pcm":
            self._pcm_sorted = None
        if target != "pending":
            if created_at is None:
                _apply(job, target, _now_after(job), NS_PER_MS)
            else:
                # A job created in the past finished in the past, with gaps like the seeds'.
                start = created_ns + self._rng.randint(50, 500) * NS_PER_MS
                _apply(job, target, start, self._rng.randint(20, 200) * NS_PER_MS)
        log.debug("sim_job_created", job_id=job.id, source=source, type=job_type, status=target)
        return job.id

    def bulk_create(
        self,
        count: int,
        source: str = "pcm",
        status: str = "success",
        job_type: str | None = None,
    ) -> list[str]:
        """Add `count` finished (or `status`) jobs quickly, created one second apart up to now.

        Without `job_type`, PCM jobs cycle through every PCM type.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("count must be a non-negative integer")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        target = _canonical_status(source, status)
        if source == "pcm":
            types: tuple[str, ...] = (job_type,) if job_type else PCM_TYPES
        else:
            types = (job_type or "order_export",)
        make = self._bulk_pcm_job if source == "pcm" else self._bulk_v2_job
        now = time.time_ns()
        rng = self._rng
        ids = []
        for index in range(count):
            self._seq += 1
            created = now - (count - index) * NS_PER_S
            job = make(types[index % len(types)], target, created, rng.random())
            self.jobs[job.id] = job
            ids.append(job.id)
        self._pcm_sorted = None
        log.info("sim_jobs_bulk_created", count=count, source=source, status=target)
        return ids

    def _bulk_pcm_job(self, job_type: str, status: str, created: int, jitter: float) -> SimJob:
        # Built field by field rather than through the walk: 100,000 of these must be cheap.
        started = created + int((50 + 400 * jitter) * NS_PER_MS)
        completed = started + int((20 + 150 * jitter) * NS_PER_MS)
        meta: dict[str, Any] = {"x_request_id": self.new_id()}
        if job_type == "product-export":
            meta = {"file_locations": None, "x_request_id": meta["x_request_id"]}
        job = SimJob(
            id=self.new_id(),
            source="pcm",
            type=job_type,
            status=status,
            seq=self._seq,
            created_ns=created,
            updated_ns=created,
            meta=meta,
            style=RECORD_STYLES[self._seq % 3],
        )
        if status in ("started", "success", "failed"):
            job.started_ns = job.updated_ns = started
        if status in ("success", "failed", "cancelled"):
            job.completed_ns = completed
        if status == "success" and job_type == "product-export":
            meta["file_locations"] = [f"{FILE_BASE_URL}/{job.id}.csv"]
        return job

    def _bulk_v2_job(self, job_type: str, status: str, created: int, jitter: float) -> SimJob:
        job = SimJob(
            id=self.new_id(),
            source="v2",
            type=job_type,
            status=status,
            seq=self._seq,
            created_ns=created,
            updated_ns=None if status == "pending" else created + int(jitter * NS_PER_S),
        )
        if status == "failed":
            job.error = V2_FAILURE
        elif status == "success":
            job.href = f"{FILE_BASE_URL}/{job.id}.csv"
        return job

    def set_status(self, job_id: str, status: str, *, force: bool = False) -> None:
        """Move a job as the real API does; `force=True` allows any transition.

        KeyError for an unknown job, ValueError for a transition the API never makes.
        """
        job = self.get(job_id)
        target = _canonical_status(job.source, status)
        if target == job.status:
            return
        allowed = (_PCM_NEXT if job.source == "pcm" else _V2_NEXT).get(job.status, frozenset())
        if not force and target not in allowed:
            if target == "cancelled":
                raise ValueError(
                    f"job {job_id} is {job.status}: only pending jobs can be cancelled"
                )
            raise ValueError(f"job {job_id} is {job.status}: it cannot become {target}")
        previous = job.status
        _apply(job, target, _now_after(job), NS_PER_MS)
        log.debug("sim_job_status_changed", job_id=job_id, previous=previous, status=target)

    def add_errors(self, job_id: str, messages: object) -> None:
        """Attach `pim-job-error` records to a job, as a failed import has."""
        job = self.get(job_id)
        if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
            raise ValueError("messages must be a list of strings")
        job.errors.extend((self.new_id(), message) for message in messages)
        log.debug("sim_job_errors_added", job_id=job_id, count=len(messages))

    def expire(self, job_id: str) -> None:
        """Forget a job, as the API does a week after creation: later reads give 404."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            raise KeyError(job_id)
        if job.source == "pcm":
            self._pcm_sorted = None
        log.debug("sim_job_expired", job_id=job_id)

    def pcm_in_order(self, order: str) -> list[SimJob]:
        """PCM jobs in the order `GET /pcm/jobs` lists them under `order` (see ORDERS)."""
        if self._pcm_sorted is None:
            pcm = [job for job in self.jobs.values() if job.source == "pcm"]
            pcm.sort(key=lambda job: (job.created_ns, job.seq), reverse=True)
            self._pcm_sorted = pcm
        if order == "newest":
            return self._pcm_sorted
        if order == "oldest":
            return self._pcm_sorted[::-1]
        shuffled = list(self._pcm_sorted)
        self._rng.shuffle(shuffled)
        return shuffled
