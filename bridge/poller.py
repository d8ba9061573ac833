"""Polls one store's job list for one source and turns what changed into observations.

Cost per cycle grows with the number of changes, not with the store's history: pages are read
from the start only while they still hold news, open jobs the scan missed are fetched one by one,
and a full re-scan on a slow timer is the safety net for the undocumented list order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
import structlog

from bridge import progress
from bridge.elasticpath import (
    ApiError,
    ElasticPathClient,
    MalformedResponse,
    NotFound,
    TransientError,
)
from bridge.events import event_id, event_type, stalled_event_id
from bridge.jobs import Job, JobParseError, JobStatus, Source, parse_job
from bridge.store import Observation, Store

log = structlog.get_logger(__name__)

PCM_OFFSET_SOFT_LIMIT = 10_000  # the API may refuse offsets past this
PROGRESS_EVERY_PAGES = 10
# An unstable list order can hide jobs from one pass: the baseline repeats (silently) until
# every job the API counts is recorded, at most this many passes.
BASELINE_PASSES = 5
# A failed job's event waits this long (seconds) for its /errors, then goes without them.
ERRORS_PATIENCE = 300.0


@dataclass(frozen=True, slots=True)
class PollSettings:
    """How one store is polled (the store's config, as plain numbers of seconds)."""

    backfill: str = "baseline"
    poll_interval: float = 5.0
    idle_poll_interval: float = 30.0
    stall_after: float = 1800.0
    full_scan_interval: float = 900.0
    page_limit: int = 100
    errors_limit: int = 100

    @classmethod
    def from_config(cls, store: Any) -> PollSettings:
        return cls(**{name: getattr(store, name) for name in cls.__dataclass_fields__})


@dataclass(slots=True)
class CycleReport:
    kind: str  # baseline | full | incremental
    requests: int = 0
    pages: int = 0
    jobs: int = 0
    changes: int = 0
    emitted: int = 0
    fetched_open: int = 0
    stalled: int = 0
    skipped: int = 0
    open_jobs: int = 0  # open after the cycle
    total: int | None = None  # what the API said the list holds


@dataclass(slots=True)
class _Scan:
    """What one cycle has seen so far."""

    report: CycleReport
    silent: bool = False
    # backfill: baseline - a job first seen late but created before the baseline began is
    # history the baseline missed (unstable list order), recorded silently too.
    history_before: float | None = None
    seen: set[str] = field(default_factory=set)  # ids only: a full scan may see 100,000 jobs
    open: dict[str, Job] = field(default_factory=dict)  # the non-terminal ones, for stalls


class Poller:
    """One store, one source (`pcm` or `v2`). State lives in Redis; this object keeps none."""

    def __init__(
        self,
        client: ElasticPathClient,
        store: Store,
        source: Source,
        settings: PollSettings,
    ) -> None:
        self.client = client
        self.store = store
        self.source: Source = source
        self.settings = settings
        self.stats: Counter[str] = Counter()
        self.last_change = 0.0
        self.consecutive_failures = 0
        # Failed jobs whose /errors would not answer: job id -> when that first happened.
        self._errors_waiting: dict[str, float] = {}
        self._log = log.bind(store=store.name, source=source)

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. API, Redis and parsing trouble is logged, never fatal."""
        while not stop.is_set():
            try:
                report = await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._failure_delay(exc)
            else:
                self.consecutive_failures = 0
                delay = self.next_interval(report)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    def _failure_delay(self, exc: Exception) -> float:
        self.consecutive_failures += 1
        self.stats["poll_failures"] += 1
        delay = min(
            self.settings.idle_poll_interval * 4,
            self.settings.poll_interval * 2 ** min(self.consecutive_failures, 10),
        )
        delay *= random.uniform(0.8, 1.2)
        expected = isinstance(exc, ApiError | redis.exceptions.RedisError | OSError)
        (self._log.warning if expected else self._log.exception)(
            "poll_failed",
            error=f"{type(exc).__name__}: {exc}",
            failures=self.consecutive_failures,
            retry_in=round(delay, 2),
        )
        return delay

    def next_interval(self, report: CycleReport) -> float:
        """Fast while jobs are open or something changed recently, slow when all is quiet."""
        if report.changes:
            self.last_change = time.monotonic()
        recently = time.monotonic() - self.last_change < self.settings.idle_poll_interval * 2
        busy = recently or report.open_jobs > 0
        return self.settings.poll_interval if busy else self.settings.idle_poll_interval

    # -- one cycle -----------------------------------------------------------------------

    async def cycle(self) -> CycleReport:
        requests_before = self.client.requests
        baseline, baseline_started, last_full = await self.store.get_metas(
            f"baseline:{self.source}", f"baseline_started:{self.source}", f"full_scan:{self.source}"
        )
        if baseline is None:
            if baseline_started is None:
                await self.store.set_meta(**{f"baseline_started:{self.source}": time.time()})
            report = await self._full_scan("baseline", None)
            await self._complete_baseline(report)
        else:
            history_before = None
            if self.settings.backfill == "baseline":
                history_before = float(baseline_started or 0)
            if time.time() - float(last_full or 0) >= self.settings.full_scan_interval:
                report = await self._full_scan("full", history_before)
                await self.store.set_meta(**{f"full_scan:{self.source}": time.time()})
            else:
                report = await self._incremental(history_before)
        report.requests = self.client.requests - requests_before
        await self.store.set_meta(**{f"last_poll:{self.source}": time.time()})
        self.stats["cycles"] += 1
        self.stats["requests"] += report.requests
        self.stats["events"] += report.emitted
        self._log.debug("cycle_completed", **{k: getattr(report, k) for k in report.__slots__})
        return report

    async def _complete_baseline(self, report: CycleReport) -> None:
        passes = int(await self.store.get_meta(f"baseline_passes:{self.source}") or 0) + 1
        known = await self.store.known_count(self.source)
        missing = (report.total or 0) - known - report.skipped
        if missing > 0 and passes < BASELINE_PASSES:
            await self.store.set_meta(**{f"baseline_passes:{self.source}": passes})
            self._log.info("baseline_pass_incomplete", passes=passes, missing=missing)
            return
        if missing > 0:
            self._log.warning("baseline_incomplete", passes=passes, missing=missing)
        now = time.time()
        await self.store.set_meta(
            **{f"baseline:{self.source}": now, f"full_scan:{self.source}": now}
        )
        self._log.info("baseline_completed", jobs=known, emitted=report.emitted, passes=passes)

    async def _full_scan(self, kind: str, history_before: float | None) -> CycleReport:
        scan = _Scan(
            CycleReport(kind),
            silent=kind == "baseline" and self.settings.backfill == "baseline",
            history_before=history_before,
        )
        if self.source == "v2":
            await self._process(scan, await self.client.list_v2_jobs())
            scan.report.pages = 1
        else:
            total = None
            offset = 0
            while True:
                try:
                    page = await self.client.list_pcm_jobs(offset, self.settings.page_limit)
                except ApiError as exc:
                    if exc.retryable or offset < PCM_OFFSET_SOFT_LIMIT:
                        raise
                    self._log.warning("scan_offset_limit_reached", offset=offset, error=str(exc))
                    break
                total = page.total if page.total is not None else total
                scan.report.total = total
                await self._process(scan, page.records)
                scan.report.pages += 1
                offset += len(page.records)
                if kind == "baseline":
                    self._progress(scan.report, total)
                if len(page.records) < self.settings.page_limit:
                    break
            if kind == "baseline":
                self._progress(scan.report, total, finished=True)
        await self._finish(scan)
        return scan.report

    async def _incremental(self, history_before: float | None) -> CycleReport:
        scan = _Scan(CycleReport("incremental"), history_before=history_before)
        if self.source == "v2":
            await self._process(scan, await self.client.list_v2_jobs())
            scan.report.pages = 1
        else:
            offset = 0
            while True:
                page = await self.client.list_pcm_jobs(offset, self.settings.page_limit)
                changes = await self._process(scan, page.records)
                scan.report.pages += 1
                offset += len(page.records)
                if len(page.records) < self.settings.page_limit:
                    break
                # Jobs the API counts that the bridge has never recorded are further on.
                accounted = await self.store.known_count(self.source) + scan.report.skipped
                unaccounted = page.total is not None and accounted < page.total
                if not changes and not unaccounted:
                    break
        await self._finish(scan)
        return scan.report

    async def _finish(self, scan: _Scan) -> None:
        """Fetch open jobs the scan did not reach, then look for stalled ones."""
        open_jobs = await self.store.open_jobs(self.source)
        for job_id in open_jobs.keys() - scan.seen:
            fetch = self.client.get_pcm_job if self.source == "pcm" else self.client.get_v2_job
            try:
                record = await fetch(job_id)
            except NotFound:
                await self.store.forget_open(self.source, job_id)
                self._log.info("job_vanished", job_id=job_id)
                continue
            scan.report.fetched_open += 1
            await self._process(scan, [record])
        # Read again: this cycle opened jobs or moved them to a new phase (new stall clock).
        open_jobs = await self.store.open_jobs(self.source)
        scan.report.open_jobs = len(open_jobs)
        if scan.silent:
            return
        now_ms = time.time() * 1000
        for job_id, reference_ms in open_jobs.items():
            job = scan.open.get(job_id)
            if job is None:
                continue
            if reference_ms + self.settings.stall_after * 1000 <= now_ms:
                if await self.store.mark_stalled(job):
                    scan.report.stalled += 1
                    scan.report.emitted += 1
                    self._announce(
                        stalled_event_id(self.store.name, self.source, job.id, job.status),
                        JobStatus.STALLED,
                        job.id,
                    )

    async def _process(self, scan: _Scan, records: Sequence[Any]) -> int:
        """Parse a page, find what is new or changed, observe it. Returns the change count."""
        jobs: list[Job] = []
        for record in records:
            try:
                jobs.append(parse_job(self.source, record))
            except JobParseError as exc:
                # Not recorded as seen: once the API sends a valid record it is picked up.
                scan.report.skipped += 1
                self.stats["parse_errors"] += 1
                self._log.warning("job_record_invalid", job_id=exc.job_id, reason=exc.reason)
        scan.report.jobs += len(jobs)
        for job in jobs:
            scan.seen.add(job.id)
            if not job.terminal:
                scan.open[job.id] = job
            else:
                scan.open.pop(job.id, None)
        states = await self.store.states(self.source, [j.id for j in jobs])
        changed = [
            (j, s) for j, s in zip(jobs, states, strict=True) if s is None or s.status != j.status
        ]
        observed: list[Job] = []
        observations: list[Observation] = []
        for job, state in changed:
            silent = scan.silent or (state is None and _before(job, scan.history_before))
            observation = await self._observation(job, silent)
            if observation is not None:
                observed.append(job)
                observations.append(observation)
        outcomes = await self.store.observe(observations)
        scan.report.changes += len(changed)
        for job, outcome in zip(observed, outcomes, strict=True):
            if outcome.result == "emitted":
                scan.report.emitted += 1
                self._announce(
                    event_id(self.store.name, self.source, job.id, job.status), job.status, job.id
                )
            elif outcome.result == "recorded" and not scan.silent:
                self._log.info("history_job_recorded", job_id=job.id, status=job.status)
        return len(changed)

    async def _observation(self, job: Job, silent: bool) -> Observation | None:
        """What to observe of a changed job; None to leave it for the next cycle."""
        errors: list[dict[str, Any]] = []
        if not silent and job.status == JobStatus.FAILED:
            if job.source == "pcm":
                found = await self._job_errors(job)
                if found is None:
                    return None
                errors = found
            elif job.error:
                errors = [{"message": job.error}]
        return Observation(
            job=job,
            silent=silent,
            stall_reference_ms=self._stall_reference_ms(job),
            errors=errors,
            file_locations=job.file_locations(),
        )

    async def _job_errors(self, job: Job) -> list[dict[str, Any]] | None:
        """A failed job's errors; None while they may still come (the failure waits for them)."""
        try:
            errors = await self.client.get_pcm_job_errors(job.id, self.settings.errors_limit)
        except (TransientError, MalformedResponse) as exc:
            since = self._errors_waiting.setdefault(job.id, time.monotonic())
            if time.monotonic() - since < ERRORS_PATIENCE:
                self._log.info("job_errors_deferred", job_id=job.id, error=str(exc))
                return None
            self._log.warning("job_errors_unavailable", job_id=job.id, error=str(exc))
            errors = []
        except ApiError as exc:
            self._log.warning("job_errors_unavailable", job_id=job.id, error=str(exc))
            errors = []
        self._errors_waiting.pop(job.id, None)
        return errors

    @staticmethod
    def _stall_reference_ms(job: Job) -> int | None:
        if job.terminal:
            return None
        if job.status == JobStatus.STARTED and job.started_at is not None:
            return int(job.started_at.timestamp() * 1000)
        if job.status == JobStatus.PENDING and job.created_at is not None:
            return int(job.created_at.timestamp() * 1000)
        # Started with no started_at (seen in the wild): from when the bridge first saw it.
        return int(time.time() * 1000)

    def _announce(self, eid: str, status: str, job_id: str) -> None:
        self._log.info(
            "event_emitted", event_id=eid, type=event_type(self.source, status), subject=job_id
        )

    def _progress(self, report: CycleReport, total: int | None, finished: bool = False) -> None:
        name = f"{self.store.name}/{self.source}"
        if progress.report(name, report.jobs, total, finished=finished) or finished:
            return  # shown by a listener (the command line's bars), or nothing more to say
        if report.pages % PROGRESS_EVERY_PAGES == 0:
            self._log.info("baseline_progress", pages=report.pages, jobs=report.jobs, total=total)


def _before(job: Job, moment: float | None) -> bool:
    return moment is not None and job.created_at is not None and job.created_at.timestamp() < moment
