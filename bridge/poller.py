"""Polls one store's job list for one source and turns what changed into observations.

Cost per cycle grows with the number of changes, not with the store's history: pages are read
from the start only while they still hold news, open jobs the scan missed are fetched one by one,
and a full re-scan on a slow timer is the safety net for the undocumented list order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bridge import progress
from bridge.elasticpath import ApiError, ElasticPathClient, Page
from bridge.events import event_id, event_type, stalled_event_id
from bridge.joberrors import JobErrors
from bridge.jobs import Job, JobParseError, JobStatus, Source, parse_job
from bridge.openjobs import OpenJobs
from bridge.recovery import Metas, StateLost, StateWatch
from bridge.redisclient import TRANSIENT
from bridge.scan import CycleReport, Scan, pages, record_id
from bridge.store import Fenced, Observation, Store

log = structlog.get_logger(__name__)

PROGRESS_EVERY_PAGES = 10
# An unstable list order can hide jobs from one pass: the baseline repeats (silently) until
# every job the API counts is recorded, at most this many passes.
BASELINE_PASSES = 5
DAY = 86_400.0
# A page holding at least this many open jobs makes the next page worth reading (_open_cluster).
OPEN_CLUSTER = 2


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
    # Finished jobs' records are forgotten this long after the job's last activity; the
    # sweep that forgets them runs this often.
    finished_job_retention: float = 30 * DAY
    sweep_interval: float = 3600.0
    # An open job whose fetch fails for good waits base, 2 x base, ... up to cap (seconds).
    job_retry_base: float = 30.0
    job_retry_cap: float = 3600.0

    @classmethod
    def from_config(cls, store: Any, **overrides: Any) -> PollSettings:
        """The store's config fields of the same names, then `overrides` (top-level fields)."""
        own = {n: getattr(store, n) for n in cls.__dataclass_fields__ if hasattr(store, n)}
        return cls(**{**own, **overrides})


class Poller:
    """One store, one source (`pcm` or `v2`). State lives in Redis; in memory only what
    must survive Redis losing it (see `StateWatch`) and per-job backoffs (see `OpenJobs`)."""

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
        # The value of the poll lease this process holds for it (bridge.leases), "" for none:
        # every write is fenced by it.
        self.fence = ""
        self._log = log.bind(store=store.name, source=source)
        self._errors = JobErrors(client, settings.errors_limit, self._log)
        self._watch = StateWatch(self._log)
        self._open = OpenJobs(
            client,
            store,
            source,
            self._log,
            self.stats,
            retry_base=settings.job_retry_base,
            retry_cap=settings.job_retry_cap,
        )
        self._next_sweep = 0.0  # monotonic

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set. API, Redis and parsing trouble is logged, never fatal;
        a write fenced off (the lease is another process's now) ends it with `Fenced`.

        Cycles are scheduled start to start: the poll interval is the period, however long
        a cycle takes (a cycle longer than the interval is followed at once by the next).
        After a failure the backoff counts from the failure.
        """
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = await self.cycle()
            except (asyncio.CancelledError, Fenced):
                raise
            except Exception as exc:
                delay = self._failure_delay(exc)
            else:
                self.consecutive_failures = 0
                delay = self.next_interval(report) - (time.monotonic() - started)
            if delay <= 0:
                continue
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
        expected = isinstance(exc, (ApiError, *TRANSIENT))
        (self._log.warning if expected else self._log.exception)(
            "poll_failed",
            error=f"{type(exc).__name__}: {exc}",
            failures=self.consecutive_failures,
            retry_in=round(delay, 2),
        )
        return delay

    def next_interval(self, report: CycleReport) -> float:
        """Fast while jobs are open or something changed recently, slow when all is quiet.

        A baseline's records are history, not activity.
        """
        if report.changes and report.kind != "baseline":
            self.last_change = time.monotonic()
        recently = time.monotonic() - self.last_change < self.settings.idle_poll_interval * 2
        busy = recently or report.open_jobs > 0
        return self.settings.poll_interval if busy else self.settings.idle_poll_interval

    # -- one cycle -----------------------------------------------------------------------

    async def cycle(self) -> CycleReport:
        started = time.time()
        requests_before = self.client.requests
        try:
            report = await self._poll()
        except StateLost:
            # Redis lost its data while this cycle ran: the next look at the metas says so.
            report = await self._poll()
        report.requests = self.client.requests - requests_before
        await self.store.set_meta(
            **{f"last_poll:{self.source}": time.time(), f"last_poll_start:{self.source}": started}
        )
        self._watch.polled(started)
        if report.kind != "baseline":
            await self._sweep_if_due()
        self.stats["cycles"] += 1
        self.stats["requests"] += report.requests
        self.stats["events"] += report.emitted
        self._log.debug("cycle_completed", **{k: getattr(report, k) for k in report.__slots__})
        return report

    async def follow(self) -> None:
        """While another process polls this store: remember what its polls leave in Redis,
        so that a loss of Redis is recovered from even if this process polls next."""
        self._watch.follow(Metas(*await self.store.get_metas(*Metas.fields(self.source))))

    async def _poll(self) -> CycleReport:
        metas = Metas(*await self.store.get_metas(*Metas.fields(self.source)))
        recover_after = self._watch.check(metas)
        if recover_after is not None and metas.recover_after is None:
            self.stats["state_losses"] += 1
        if metas.baseline is None:
            await self._begin_baseline(metas, recover_after)
            report = await self._full_scan("baseline", recover_after=recover_after)
            await self._complete_baseline(report)
            return report
        history_before = None
        if self.settings.backfill == "baseline":
            history_before = float(metas.baseline_started or 0)
        if time.time() - float(metas.full_scan or 0) >= self.settings.full_scan_interval:
            report = await self._full_scan("full", history_before=history_before)
            await self.store.set_meta(**{f"full_scan:{self.source}": time.time()})
            return report
        return await self._incremental(history_before)

    async def _begin_baseline(self, metas: Metas, recover_after: float | None) -> None:
        fields: dict[str, str | float] = {}
        if metas.baseline_started is None:
            # After a loss of Redis, the original start: history stays history.
            fields[f"baseline_started:{self.source}"] = self._watch.baseline_started or time.time()
        if recover_after is not None and metas.recover_after is None:
            # In Redis too: a process that takes over (or restarts) mid-recovery goes on with it.
            fields[f"recover_after:{self.source}"] = recover_after
        if fields:
            await self.store.set_meta(**fields)

    async def _complete_baseline(self, report: CycleReport) -> None:
        passes = int(await self.store.get_meta(f"baseline_passes:{self.source}") or 0) + 1
        known = await self.store.known_count(self.source)
        missing = (report.total or 0) - known - report.skipped
        # A scan cut short by a repeated page would only repeat itself: no further pass.
        if missing > 0 and passes < BASELINE_PASSES and not report.truncated:
            await self.store.set_meta(**{f"baseline_passes:{self.source}": passes})
            self._log.info("baseline_pass_incomplete", passes=passes, missing=missing)
            return
        if missing > 0:
            self._log.warning("baseline_incomplete", passes=passes, missing=missing)
        now = time.time()
        await self.store.set_meta(
            **{f"baseline:{self.source}": now, f"full_scan:{self.source}": now}
        )
        await self.store.delete_meta(f"recover_after:{self.source}")
        self._watch.baseline_completed()
        self._log.info("baseline_completed", jobs=known, emitted=report.emitted, passes=passes)

    async def _sweep_if_due(self) -> None:
        """Forget finished jobs' records past retention, about once per sweep_interval."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.settings.sweep_interval
        before = time.time() - self.settings.finished_job_retention
        forgotten = await self.store.forget_finished(self.source, before)
        self.stats["jobs_forgotten"] += forgotten
        if forgotten:
            self._log.info("finished_jobs_forgotten", jobs=forgotten)

    def _pages(self, scan: Scan) -> AsyncGenerator[Page, None]:
        return pages(self.client, scan, self.settings.page_limit, self._log, self.stats)

    def _new_scan(self, kind: str, **how: Any) -> Scan:
        scan = Scan(CycleReport(kind), **how)
        if kind != "baseline":
            scan.marker = f"baseline:{self.source}"
            scan.forgotten_before = time.time() - self.settings.finished_job_retention
        return scan

    async def _full_scan(
        self,
        kind: str,
        *,
        history_before: float | None = None,
        recover_after: float | None = None,
    ) -> CycleReport:
        scan = self._new_scan(
            kind,
            silent=kind == "baseline"
            and self.settings.backfill == "baseline"
            and recover_after is None,
            history_before=history_before,
            recover_after=recover_after,
        )
        if self.source == "v2":
            await self._process(scan, await self.client.list_v2_jobs())
            scan.report.pages = 1
        else:
            async with contextlib.aclosing(self._pages(scan)) as pages:
                async for page in pages:
                    await self._process(scan, page.records)
                    if kind == "baseline":
                        self._progress(scan.report, scan.report.total)
            if kind == "baseline":
                self._progress(scan.report, scan.report.total, finished=True)
        await self._finish(scan)
        return scan.report

    async def _incremental(self, history_before: float | None) -> CycleReport:
        scan = self._new_scan("incremental", history_before=history_before)
        if self.source == "v2":
            await self._process(scan, await self.client.list_v2_jobs())
            scan.report.pages = 1
        else:
            open_ids: Collection[str] | None = None  # read once, when first needed
            async with contextlib.aclosing(self._pages(scan)) as pages:
                async for page in pages:
                    if await self._process(scan, page.records) or await self._unaccounted(scan):
                        continue
                    if open_ids is None:
                        open_ids = (await self.store.open_jobs(self.source)).keys()
                    if not _open_cluster(scan, page, open_ids):
                        break
        await self._finish(scan)
        return scan.report

    async def _unaccounted(self, scan: Scan) -> bool:
        """Whether jobs the API counted when the scan began were never recorded: they are
        further on. (Jobs created since are at the top, for the next cycle.)"""
        accounted = await self.store.known_count(self.source) + scan.report.skipped
        return scan.report.total is not None and accounted < scan.report.total

    async def _finish(self, scan: Scan) -> None:
        """Fetch open jobs the scan did not reach, then look for stalled ones."""
        open_jobs = await self.store.open_jobs(self.source)
        self._open.keep_only(open_jobs)
        for job_id in open_jobs.keys() - scan.seen:
            record = await self._open.fetch(scan.report, job_id)
            if record is not None:
                scan.report.fetched_open += 1
                await self._process(scan, [record])
        # Read again: this cycle opened jobs or moved them to a new phase (new stall clock).
        open_jobs = await self.store.open_jobs(self.source)
        scan.report.open_jobs = len(open_jobs)
        if scan.silent or scan.recover_after is not None:
            return
        now_ms = time.time() * 1000
        for job_id, reference_ms in open_jobs.items():
            job = scan.open.get(job_id)
            if job is None:
                continue
            if reference_ms + self.settings.stall_after * 1000 <= now_ms:
                if await self.store.mark_stalled(job, fence=self.fence):
                    scan.report.stalled += 1
                    scan.report.emitted += 1
                    self._announce(
                        stalled_event_id(self.store.name, self.source, job.id, job.status),
                        JobStatus.STALLED,
                        job.id,
                    )

    async def _process(self, scan: Scan, records: Sequence[Any]) -> int:
        """Parse a page, find what is new or changed, observe it. Returns the change count."""
        jobs = self._parse(scan, records)
        states = await self.store.states(self.source, [j.id for j in jobs])
        ready: list[tuple[Job, bool]] = []
        failed: list[tuple[Job, bool]] = []
        for job, state in zip(jobs, states, strict=True):
            if state is not None and state.status == job.status:
                continue
            if state is None and scan.forgotten(job):
                scan.report.history += 1
                continue
            silent = scan.silent_for(job, state)
            needs_errors = not silent and job.status == JobStatus.FAILED
            (failed if needs_errors else ready).append((job, silent))
        # A failed job's event waits for its /errors (a request each, at the rate budget):
        # the page's other events go out first, then each failed one as its errors arrive.
        await self._observe(scan, [self._observation(job, silent) for job, silent in ready])
        for job, silent in failed:
            errors = await self._errors.of(job)
            if errors is not None:  # None: not yet, the event waits for the next cycle
                await self._observe(scan, [self._observation(job, silent, errors)])
        scan.report.changes += len(ready) + len(failed)
        return len(ready) + len(failed)

    async def _observe(self, scan: Scan, observations: list[Observation]) -> None:
        outcomes = await self.store.observe(observations, marker=scan.marker, fence=self.fence)
        if any(outcome.result == "lost" for outcome in outcomes):
            raise StateLost(self.store.name)
        for observation, outcome in zip(observations, outcomes, strict=True):
            job = observation.job
            if outcome.result == "emitted":
                scan.report.emitted += 1
                self._announce(
                    event_id(self.store.name, self.source, job.id, job.status), job.status, job.id
                )
            elif outcome.result == "recorded" and not scan.silent:
                self._log.info("history_job_recorded", job_id=job.id, status=job.status)

    def _parse(self, scan: Scan, records: Sequence[Any]) -> list[Job]:
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
        return jobs

    def _observation(
        self, job: Job, silent: bool, errors: Sequence[dict[str, Any]] = ()
    ) -> Observation:
        return Observation(
            job=job,
            silent=silent,
            stall_reference_ms=self._stall_reference_ms(job),
            errors=list(errors),
            file_locations=job.file_locations(),
        )

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


def _open_cluster(scan: Scan, page: Page, open_ids: Collection[str]) -> bool:
    """Whether open jobs cluster here, so that the next page is worth reading.

    They do after a catalog import fans out into thousands of jobs: reading on costs one
    request a page, where fetching them one by one would cost one request each.
    """
    on_page = sum(1 for record in page.records if record_id(record) in open_ids)
    unseen = sum(1 for job_id in open_ids if job_id not in scan.seen)
    return on_page >= OPEN_CLUSTER and unseen >= OPEN_CLUSTER
