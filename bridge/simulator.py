"""A faithful fake of the Elastic Path Jobs API (PCM and v2) for tests, the demo and benchmarks."""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

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
TIMESTAMP_STYLES = ("iso", "go", "naive", "mixed")
V2_STATUS_STYLES = ("lower", "upper")
DEFAULT_PAGE_LIMIT = 25
MAX_PAGE_LIMIT = 100
DEFAULT_BASE_URL = "https://useast.api.elasticpath.com"
FILE_BASE_URL = "https://files.example.com/exports"
REQUEST_LOG_SIZE = 100_000
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
V2_FAILURE = "No results matched the supplied filter"
# Messages seen in the docs and in real imports; traffic mode draws from them.
ERROR_MESSAGES = (
    "data.attributes.sku: Must be unique amongst products.",
    "slug must be URL compatible.",
    "data.attributes.name: Must be a string.",
    "data.attributes.commodity_type: Must be one of the following: physical, digital.",
    "row 14: price amount must be a non-negative integer.",
    "hierarchy not found",
)

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STYLES = ("iso", "go", "naive")
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
    seconds, nanos = divmod(ns, _NS_PER_S)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if style == "naive":
        return stamp
    if style == "nano":
        digits = f"{nanos:09d}".rstrip("0")
    else:
        digits = f"{nanos // _NS_PER_MS:03d}".rstrip("0")
    fraction = f".{digits}" if digits else ""
    if style == "go":
        return f"{stamp.replace('T', ' ')}{fraction} +0000 UTC"
    return f"{stamp}{fraction}Z"


def _to_ns(value: datetime) -> int:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1) * 1000


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


def _check_fault(name: str, value: Any) -> Any:
    if name == "faults_on_token":
        if not isinstance(value, bool):
            raise ValueError("faults_on_token must be true or false")
        return value
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


class Simulator:
    """The state of a fake Elastic Path store: jobs, tokens, faults, settings and counters."""

    def __init__(
        self,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        token_lifetime: float = 3600,
        order: str = "newest",
        seed: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self._initial = {"token_lifetime": token_lifetime, "order": order}
        self._rng = random.Random(seed)
        self._traffic_tasks: set[asyncio.Task[None]] = set()
        self.traffic_rate = 0.0
        self._set_defaults()
        self.configure(order=order, token_lifetime=token_lifetime)

    def _set_defaults(self) -> None:
        self.jobs: dict[str, SimJob] = {}
        self.tokens: dict[str, float] = {}  # token -> wall-clock expiry
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self.request_log: deque[tuple[float, str]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.tokens_issued = 0
        self.order = "newest"
        self.timestamp_style = "iso"
        self.v2_status_style = "lower"
        self.started_null_quirk = False
        self.include_links = True
        self.token_reply_wrapped = False
        self._seq = 0
        self._last_created_ns = 0
        self._pcm_sorted: list[SimJob] | None = None

    def reset(self) -> None:
        """Back to the state of a new simulator (same credentials); traffic keeps running."""
        self._set_defaults()
        self.configure(**self._initial)
        log.info("sim_reset")

    # Settings and faults

    @property
    def token_lifetime(self) -> float:
        return self.faults.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: float) -> None:
        self.faults.token_lifetime = _check_fault("token_lifetime", value)

    def settings(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "timestamp_style": self.timestamp_style,
            "v2_status_style": self.v2_status_style,
            "started_null_quirk": self.started_null_quirk,
            "include_links": self.include_links,
            "token_reply_wrapped": self.token_reply_wrapped,
            "token_lifetime": self.token_lifetime,
        }

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings by name (see `settings()`); ValueError names the bad one."""
        choices = {
            "order": ORDERS,
            "timestamp_style": TIMESTAMP_STYLES,
            "v2_status_style": V2_STATUS_STYLES,
        }
        flags = ("started_null_quirk", "include_links", "token_reply_wrapped")
        checked: dict[str, Any] = {}
        for name, value in settings.items():
            if name in choices:
                if value not in choices[name]:
                    raise ValueError(f"{name} must be one of {', '.join(choices[name])}")
            elif name in flags:
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif name == "token_lifetime":
                value = _check_fault(name, value)
            else:
                known = ", ".join(sorted([*choices, *flags, "token_lifetime"]))
                raise ValueError(f"unknown setting {name!r}; known: {known}")
            checked[name] = value
        # Validate everything first so that a bad request changes nothing.
        for name, value in checked.items():
            setattr(self, name, value)
        return self.settings()

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault fields by name (see `Faults`); ValueError names the bad one."""
        known = {f.name for f in fields(Faults)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown fault field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        checked = {name: _check_fault(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self.faults, name, value)
        log.info("sim_faults_set", **checked)
        return self.faults

    # Jobs

    def _new_id(self) -> str:
        # From the seeded generator, so that a seeded run is reproducible end to end.
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _job(self, job_id: str) -> SimJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _now_after(self, job: SimJob) -> int:
        """Now, but never at or before a stamp the job already has."""
        stamps = (job.created_ns, job.updated_ns or 0, job.started_ns or 0, job.completed_ns or 0)
        return max(time.time_ns(), max(stamps) + _NS_PER_MS)

    def _canonical_status(self, source: str, status: str) -> str:
        # Callers may use any word docs and SDKs use ("processing", "COMPLETE", ...).
        try:
            word = normalise_status(status)
        except ValueError:
            word = status
        allowed = _PCM_STATUSES if source == "pcm" else _V2_STATUSES
        if word not in allowed:
            raise ValueError(f"status must be one of {', '.join(allowed)} for {source} jobs")
        return word

    def _pcm_meta(self, job_type: str, meta: dict[str, Any] | None) -> dict[str, Any]:
        base: dict[str, Any] = {"x_request_id": self._new_id()}
        if job_type == "product-export":
            base["file_locations"] = None
        elif job_type == "hierarchy-duplicate":
            base["copied_from"] = self._new_id()
            base["hierarchy_id"] = self._new_id()
        base.update(meta or {})
        return dict(sorted(base.items()))  # the API sends meta keys sorted

    def create_job(
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
        target = self._canonical_status(source, status)
        if created_at is None:
            # Distinct millisecond stamps keep "newest first" unambiguous on the wire.
            created_ns = max(time.time_ns(), self._last_created_ns + _NS_PER_MS)
            self._last_created_ns = created_ns
        else:
            created_ns = _to_ns(created_at)
        self._seq += 1
        job = SimJob(
            id=self._new_id(),
            source=source,
            type=job_type,
            status="pending",
            seq=self._seq,
            created_ns=created_ns,
            updated_ns=created_ns if source == "pcm" else None,
            meta=self._pcm_meta(job_type, meta) if source == "pcm" else dict(meta or {}),
            style=self._rng.choice(_STYLES),
        )
        self.jobs[job.id] = job
        if source == "pcm":
            self._pcm_sorted = None
        if target != "pending":
            if created_at is None:
                self._apply(job, target, self._now_after(job), _NS_PER_MS)
            else:
                # A job created in the past finished in the past, with gaps like the seeds'.
                start = created_ns + self._rng.randint(50, 500) * _NS_PER_MS
                self._apply(job, target, start, self._rng.randint(20, 200) * _NS_PER_MS)
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
        target = self._canonical_status(source, status)
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
            created = now - (count - index) * _NS_PER_S
            job = make(types[index % len(types)], target, created, rng.random())
            self.jobs[job.id] = job
            ids.append(job.id)
        self._pcm_sorted = None
        log.info("sim_jobs_bulk_created", count=count, source=source, status=target)
        return ids

    def _bulk_pcm_job(self, job_type: str, status: str, created: int, jitter: float) -> SimJob:
        # Built field by field rather than through the walk: 100,000 of these must be cheap.
        started = created + int((50 + 400 * jitter) * _NS_PER_MS)
        completed = started + int((20 + 150 * jitter) * _NS_PER_MS)
        meta: dict[str, Any] = {"x_request_id": self._new_id()}
        if job_type == "product-export":
            meta = {"file_locations": None, "x_request_id": meta["x_request_id"]}
        job = SimJob(
            id=self._new_id(),
            source="pcm",
            type=job_type,
            status=status,
            seq=self._seq,
            created_ns=created,
            updated_ns=created,
            meta=meta,
            style=_STYLES[self._seq % 3],
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
            id=self._new_id(),
            source="v2",
            type=job_type,
            status=status,
            seq=self._seq,
            created_ns=created,
            updated_ns=None if status == "pending" else created + int(jitter * _NS_PER_S),
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
        job = self._job(job_id)
        target = self._canonical_status(job.source, status)
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
        self._apply(job, target, self._now_after(job), _NS_PER_MS)
        log.debug("sim_job_status_changed", job_id=job_id, previous=previous, status=target)

    def _apply(self, job: SimJob, target: str, at: int, step: int) -> None:
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

    def add_errors(self, job_id: str, messages: list[str]) -> None:
        """Attach `pim-job-error` records to a job, as a failed import has."""
        job = self._job(job_id)
        if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
            raise ValueError("messages must be a list of strings")
        job.errors.extend((self._new_id(), message) for message in messages)
        log.debug("sim_job_errors_added", job_id=job_id, count=len(messages))

    def expire(self, job_id: str) -> None:
        """Forget a job, as the API does a week after creation: later reads give 404."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            raise KeyError(job_id)
        if job.source == "pcm":
            self._pcm_sorted = None
        log.debug("sim_job_expired", job_id=job_id)

    def pcm_jobs_in_order(self) -> list[SimJob]:
        """PCM jobs in the order `GET /pcm/jobs` lists them right now."""
        if self._pcm_sorted is None:
            pcm = [job for job in self.jobs.values() if job.source == "pcm"]
            pcm.sort(key=lambda job: (job.created_ns, job.seq), reverse=True)
            self._pcm_sorted = pcm
        if self.order == "newest":
            return self._pcm_sorted
        if self.order == "oldest":
            return self._pcm_sorted[::-1]
        shuffled = list(self._pcm_sorted)
        self._rng.shuffle(shuffled)
        return shuffled

    # Rendering

    def record(self, job_id: str, base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
        """The job exactly as `GET /pcm/jobs/{id}` or `GET /v2/jobs/{id}` puts it in `data`."""
        return self.render(self._job(job_id), base_url)

    def render(self, job: SimJob, base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
        return self._render_pcm(job) if job.source == "pcm" else self._render_v2(job, base_url)

    def _render_pcm(self, job: SimJob) -> dict[str, Any]:
        style = job.style if self.timestamp_style == "mixed" else self.timestamp_style
        started = job.started_ns
        if self.started_null_quirk and job.status == "started":
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

    def _render_v2(self, job: SimJob, base_url: str) -> dict[str, Any]:
        updated = format_timestamp(job.updated_ns, "nano") if job.updated_ns else GO_ZERO_TIME
        return {
            "id": job.id,
            "type": "job",
            "job_type": job.type,
            "status": _V2_WORDS[self.v2_status_style][job.status],
            "error": job.error,
            "link": {"href": job.href},
            "links": {"self": f"{base_url}/v2/jobs/{job.id}"},
            "timestamps": {
                "created_at": format_timestamp(job.created_ns, "nano"),
                "updated_at": updated,
            },
        }

    def _maybe_corrupt(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The invalid-record fault: one record a strict parser must refuse."""
        if not records or self._rng.random() >= self.faults.rate_invalid_record:
            return records
        broken = records[self._rng.randrange(len(records))]
        if "attributes" in broken:
            holder, stamps = broken["attributes"], broken["attributes"]
        else:
            holder, stamps = broken, broken["timestamps"]
        if self._rng.random() < 0.5:
            holder["status"] = "???"
        else:
            stamps["created_at"] = "yesterday-ish"
        return records

    # Tokens

    def issue_token(self) -> dict[str, Any]:
        """A new bearer token in the flat shape every SDK reads."""
        now = time.time()
        lifetime = self.token_lifetime
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_hex(20)
        self.tokens[token] = now + lifetime
        self.tokens_issued += 1
        log.debug("sim_token_issued", expires_in=lifetime)
        return {
            "expires": int(now + lifetime),
            "identifier": "client_credentials",
            "expires_in": math.ceil(lifetime),
            "access_token": token,
            "token_type": "Bearer",
        }

    def token_valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        if expiry is None:
            return False
        if expiry <= time.time():
            del self.tokens[token]
            return False
        return True

    # Counters

    def count_request(self, route: str) -> None:
        self.requests[route] += 1
        self.request_log.append((time.monotonic(), route))

    def requests_in_last(self, seconds: float, route: str | None = None) -> int:
        """How many API requests (of `route`, or all) arrived in the last `seconds`."""
        since = time.monotonic() - seconds
        total = 0
        for at, name in reversed(self.request_log):
            if at < since:
                break
            if route is None or name == route:
                total += 1
        return total

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "tokens_issued": self.tokens_issued,
            "jobs": len(self.jobs),
            "traffic_rate": self.traffic_rate,
        }

    # Traffic

    def start_traffic(self, rate: float) -> None:
        """Create `rate` jobs per second and walk each to an end; needs a running event loop."""
        self.stop_traffic()
        if rate <= 0:
            return
        self.traffic_rate = rate
        self._spawn(self._traffic_loop(rate))
        log.info("sim_traffic_started", rate=rate)

    def stop_traffic(self) -> None:
        """Cancel the traffic loop and every job walk in flight (see `aclose` to wait)."""
        if not self._traffic_tasks:
            return
        for task in self._traffic_tasks:
            task.cancel()
        self.traffic_rate = 0.0
        log.info("sim_traffic_stopped")

    async def aclose(self) -> None:
        """Stop traffic and wait until its tasks have ended."""
        tasks = list(self._traffic_tasks)
        self.stop_traffic()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._traffic_tasks.add(task)
        task.add_done_callback(self._traffic_tasks.discard)

    async def _traffic_loop(self, rate: float) -> None:
        # The real API runs one job at a time per organisation; overlapping them here keeps
        # the demo lively. Delays shrink with the rate so a fast run still finishes jobs.
        scale = 1.0 / max(rate, 1.0)
        while True:
            self._spawn(self._walk_new_job(scale))
            await asyncio.sleep(self._rng.uniform(0.5, 1.5) / rate)

    async def _walk_new_job(self, scale: float) -> None:
        rng = self._rng
        if rng.random() < 0.1:
            job_id = self.create_job("v2", "order_export")
        else:
            job_type = rng.choice(PCM_TYPES)
            meta = {"filter": "eq(sku,product-1)"} if job_type == "product-export" else None
            job_id = self.create_job("pcm", job_type, meta=meta)
        try:
            await asyncio.sleep(rng.uniform(0.5, 3.0) * scale)
            draw = rng.random()
            if draw < 0.05 and self.jobs[job_id].source == "pcm":
                self.set_status(job_id, "cancelled")
                return
            self.set_status(job_id, "started")
            await asyncio.sleep(rng.uniform(1.0, 5.0) * scale)
            if draw < 0.25:
                if self.jobs[job_id].source == "pcm":
                    self.add_errors(job_id, rng.sample(ERROR_MESSAGES, rng.randint(1, 3)))
                self.set_status(job_id, "failed")
            else:
                self.set_status(job_id, "success")
        except (KeyError, ValueError):
            # Expired, reset or forced elsewhere meanwhile: the walk has nothing left to do.
            log.debug("sim_traffic_walk_abandoned", job_id=job_id)


# HTTP

SIMULATOR = web.AppKey("simulator", Simulator)
TOKEN_ROUTE = "POST /oauth/access_token"
_API_PREFIXES = ("/pcm/", "/v2/")


def _json_error(http_status: int, /, **error: Any) -> web.Response:
    return web.json_response({"errors": [error]}, status=http_status)


def _json_exception(exc_class: type[web.HTTPException], body: dict[str, Any]) -> web.HTTPException:
    return exc_class(text=json.dumps(body), content_type="application/json")


def _pcm_not_found() -> web.Response:
    return _json_error(404, title="Not Found", status="404")


def _v2_not_found() -> web.Response:
    return _json_error(
        404,
        status=404,
        title="Resource Not Found",
        detail="The resource you are requesting does not exist",
    )


def _unauthorized() -> web.Response:
    return _json_error(401, status=401, title="Unable to validate access token")


def _route_of(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    canonical = getattr(resource, "canonical", None)
    return f"{request.method} {canonical}" if canonical else None


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _early_fault(sim: Simulator, route: str) -> web.Response | None:
    faults, rng = sim.faults, sim._rng
    if rng.random() < faults.rate_slow:
        await asyncio.sleep(faults.slow_seconds)
    if rng.random() < faults.rate_429:
        response = _json_error(429, status=429, title="Too Many Requests")
        if faults.retry_after is not None:
            response.headers["Retry-After"] = f"{faults.retry_after:g}"
        return response
    if rng.random() < faults.rate_500:
        # PXM writes the status as a string, the legacy v2 API as a number.
        status: int | str = 500 if " /v2/" in route else "500"
        return _json_error(
            500,
            status=status,
            title="Internal Server Error",
            detail="There was an internal server error, you can report with your request id.",
            request_id=str(uuid.uuid4()),
        )
    return None


def _malformed(sim: Simulator, response: web.StreamResponse) -> web.StreamResponse:
    body = getattr(response, "body", None)
    if response.status != 200 or not isinstance(body, bytes):
        return response
    if sim._rng.random() >= sim.faults.rate_malformed:
        return response
    if sim._rng.random() < 0.5:
        # A proxy's error page behind a 200, as load balancers sometimes send.
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return web.Response(status=200, body=page, content_type="text/html")
    return web.Response(status=200, body=body[: len(body) // 2], content_type="application/json")


@web.middleware
async def _api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    route = _route_of(request)
    if route is None or request.path.startswith("/_sim/"):
        return await handler(request)
    sim.count_request(route)
    is_api = request.path.startswith(_API_PREFIXES)
    faulty = is_api or (route == TOKEN_ROUTE and sim.faults.faults_on_token)
    if faulty:
        early = await _early_fault(sim, route)
        if early is not None:
            return early
    if is_api and not sim.token_valid(_bearer(request)):
        return _unauthorized()
    response = await handler(request)
    return _malformed(sim, response) if faulty else response


async def _token(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return _json_error(
            400, status=400, title="Bad Request", detail="grant_type must be client_credentials"
        )
    if form.get("client_id") != sim.client_id or form.get("client_secret") != sim.client_secret:
        return _json_error(
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
            raise _json_exception(web.HTTPBadRequest, body)
        values.append(value)
    return values[0], values[1]


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _links(request: web.Request, offset: int, limit: int, total: int) -> dict[str, str | None]:
    def url(at: int) -> str:
        return f"{_origin(request)}{request.path}?page[offset]={at}&page[limit]={limit}"

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
    ordered = sim.pcm_jobs_in_order()
    data = sim._maybe_corrupt([sim.render(job) for job in ordered[offset : offset + limit]])
    body: dict[str, Any] = {"data": data, "meta": {"results": {"total": len(ordered)}}}
    if sim.include_links:
        body["links"] = _links(request, offset, limit, len(ordered))
    return web.json_response(body)


async def _pcm_get(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = _pcm_job(request)
    if job is None:
        return _pcm_not_found()
    return web.json_response({"data": sim._maybe_corrupt([sim.render(job)])[0]})


async def _pcm_errors(request: web.Request) -> web.Response:
    job = _pcm_job(request)
    if job is None:
        return _pcm_not_found()
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
        return _pcm_not_found()
    if job.status != "pending":
        return _json_error(
            422,
            title="Failed Validation",
            status="422",
            detail=f"Only pending jobs can be cancelled; this job is {job.status}.",
        )
    sim.set_status(job.id, "cancelled")
    return web.json_response({"data": sim.render(job)})


async def _v2_list(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    base = _origin(request)
    records = [sim.render(job, base) for job in sim.jobs.values() if job.source == "v2"]
    return web.json_response({"data": sim._maybe_corrupt(records)})


async def _v2_get(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = _v2_job(request)
    if job is None:
        return _v2_not_found()
    record = sim.render(job, _origin(request))
    return web.json_response({"data": sim._maybe_corrupt([record])[0]})


async def _v2_file(request: web.Request) -> web.Response:
    job = _v2_job(request)
    if job is None or job.status != "success":
        return _v2_not_found()
    return web.json_response({"data": {"href": job.href}})


# Control endpoints: tests and the demo drive the fake through these, without auth.


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
    return _json_exception(exc_class, {"error": message})


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
        {"id": job_id, "record": sim.record(job_id, _origin(request))}, status=201
    )


@_control
async def _sim_status(sim: Simulator, request: web.Request, body: dict[str, Any]) -> web.Response:
    job_id = request.match_info["id"]
    status = body.get("status")
    if not isinstance(status, str):
        raise ValueError("status is required and must be a string")
    sim.set_status(job_id, status, force=_optional(body, "force", bool, False))
    return web.json_response({"id": job_id, "record": sim.record(job_id, _origin(request))})


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


def make_app(sim: Simulator) -> web.Application:
    """The fake API as an aiohttp application serving `sim`."""
    app = web.Application(middlewares=[_api_middleware])
    app[SIMULATOR] = sim

    async def stop_traffic_on_cleanup(_app: web.Application) -> AsyncIterator[None]:
        yield
        await sim.aclose()

    app.cleanup_ctx.append(stop_traffic_on_cleanup)
    app.router.add_post("/oauth/access_token", _token)
    app.router.add_get("/pcm/jobs", _pcm_list)
    app.router.add_get("/pcm/jobs/{id}", _pcm_get)
    app.router.add_get("/pcm/jobs/{id}/errors", _pcm_errors)
    app.router.add_post("/pcm/jobs/{id}/cancel", _pcm_cancel)
    app.router.add_get("/v2/jobs", _v2_list)
    app.router.add_get("/v2/jobs/{id}", _v2_get)
    app.router.add_get("/v2/jobs/{id}/file", _v2_file)
    app.router.add_post("/_sim/jobs", _sim_create)
    app.router.add_post("/_sim/jobs/{id}/status", _sim_status)
    app.router.add_post("/_sim/jobs/{id}/errors", _sim_errors)
    app.router.add_delete("/_sim/jobs/{id}", _sim_expire)
    app.router.add_post("/_sim/bulk", _sim_bulk)
    app.router.add_post("/_sim/faults", _sim_faults)
    app.router.add_post("/_sim/settings", _sim_settings)
    app.router.add_get("/_sim/stats", _sim_stats)
    app.router.add_post("/_sim/traffic", _sim_traffic)
    app.router.add_post("/_sim/reset", _sim_reset)
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    traffic_rate: float = 0.0,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
) -> None:
    """Run the fake API until interrupted, optionally with automatic traffic."""
    sim = Simulator(client_id=client_id, client_secret=client_secret)
    app = make_app(sim)
    url = f"http://{host}:{port}"

    async def start_traffic(_app: web.Application) -> None:
        sim.start_traffic(traffic_rate)

    if traffic_rate > 0:
        app.on_startup.append(start_traffic)

    def announce(_default_message: str) -> None:
        # Called by run_app once the port is bound, so the URL printed is really serving.
        print(f"Elastic Path simulator serving on {url}", flush=True)
        print(f"  client_id={client_id} client_secret={client_secret}", flush=True)
        print("  control: /_sim/stats, /_sim/jobs, /_sim/faults, ... (Ctrl+C to stop)", flush=True)

    log.info("sim_serving", url=url, traffic_rate=traffic_rate)
    web.run_app(app, host=host, port=port, print=announce)
