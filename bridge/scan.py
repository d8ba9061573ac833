"""One pass over a job list: the pages it reads, what it saw, and how it treats a sighting."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from bridge.elasticpath import ApiError, ElasticPathClient, Page
from bridge.jobs import Job
from bridge.recovery import changed_after
from bridge.store import StoredState, last_activity

PCM_OFFSET_SOFT_LIMIT = 10_000  # the API may refuse offsets past this


@dataclass(slots=True)
class CycleReport:
    kind: str  # baseline | full | incremental
    requests: int = 0
    pages: int = 0
    jobs: int = 0
    changes: int = 0
    emitted: int = 0
    fetched_open: int = 0
    fetch_failed: int = 0  # open jobs whose fetch failed for good (skipped, backing off)
    deferred: int = 0  # open jobs not fetched: still waiting out their backoff
    stalled: int = 0
    skipped: int = 0
    history: int = 0  # finished jobs whose records were forgotten, seen again: left alone
    open_jobs: int = 0  # open after the cycle
    # What the API said the list held when the scan began (its first page): jobs created
    # while the scan runs are at the top of a newest-first list, for the next cycle.
    total: int | None = None
    truncated: bool = False  # the scan stopped at a page it had already seen


@dataclass(slots=True)
class Scan:
    """What one cycle has seen so far, and how it treats what it sees."""

    report: CycleReport
    silent: bool = False
    # backfill: baseline - a job first seen late but created before the baseline began is
    # history the baseline missed (unstable list order), recorded silently too.
    history_before: float | None = None
    # Recovery after Redis lost its data: a job first seen is announced if it changed after
    # this moment (epoch seconds), recorded silently otherwise.
    recover_after: float | None = None
    # After the baseline: a finished job last active before this is one whose record was
    # forgotten (retention) - history, left alone.
    forgotten_before: float | None = None
    marker: str = ""  # meta field whose absence means Redis lost the state (see StateLost)
    seen: set[str] = field(default_factory=set)  # ids only: a full scan may see 100,000 jobs
    open: dict[str, Job] = field(default_factory=dict)  # the non-terminal ones, for stalls

    def forgotten(self, job: Job) -> bool:
        """A finished job never recorded (or forgotten), last active before the retention."""
        if self.forgotten_before is None or not job.terminal:
            return False
        activity = last_activity(job)
        return activity is not None and activity < self.forgotten_before

    def silent_for(self, job: Job, state: StoredState | None) -> bool:
        """Whether observing this job records it without an event."""
        if state is not None:
            return self.silent
        if self.recover_after is not None:
            return not changed_after(job, self.recover_after)
        return self.silent or _before(job, self.history_before)


async def pages(
    client: ElasticPathClient, scan: Scan, limit: int, log: Any, stats: Counter[str]
) -> AsyncGenerator[Page, None]:
    """Pages of /pcm/jobs from the start, until a short page, the offset soft limit, or a
    page already seen (an API that ignores `page[offset]` would otherwise never end)."""
    offset = 0
    seen: set[int] = set()  # a hash of each page's ids: 8 bytes a page, not 100 ids
    while True:
        try:
            page = await client.list_pcm_jobs(offset, limit)
        except ApiError as exc:
            if exc.retryable or offset < PCM_OFFSET_SOFT_LIMIT:
                raise
            log.warning("scan_offset_limit_reached", offset=offset, error=str(exc))
            return
        ids = hash(tuple(record_id(r) for r in page.records))
        if len(page.records) == limit and ids in seen:
            scan.report.truncated = True
            stats["repeated_pages"] += 1
            log.warning("scan_page_repeated", offset=offset, pages=scan.report.pages)
            return
        seen.add(ids)
        scan.report.pages += 1
        if scan.report.pages == 1:
            scan.report.total = page.total
        yield page
        offset += len(page.records)
        if len(page.records) < limit:
            return


def _before(job: Job, moment: float | None) -> bool:
    return moment is not None and job.created_at is not None and job.created_at.timestamp() < moment


def record_id(record: Any) -> Any:
    """A raw record's `id`, before parsing (None when it has none)."""
    return record.get("id") if isinstance(record, dict) else None
