"""Open jobs the list did not show, fetched one by one; one that fails for good backs off alone.

A job whose GET fails for a reason a retry will not fix (a 400, a broken or oversized body)
must not fail the whole cycle - that would turn every cycle into a failure, `last_poll` would
never move and no stall would be noticed. It is skipped, logged once per backoff step, and
asked again after 1, 2, 4, ... times `retry_base`, at most `retry_cap`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from bridge.elasticpath import ApiError, ElasticPathClient, NotFound, TransientError
from bridge.jobs import Source
from bridge.scan import CycleReport
from bridge.store import Store


class _Backoff:
    """Open jobs whose fetch failed for good, each waiting out its own exponential backoff."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self._jobs: dict[str, tuple[int, float]] = {}  # job id -> (failures, retry at)

    def waiting(self, job_id: str) -> bool:
        entry = self._jobs.get(job_id)
        return entry is not None and time.monotonic() < entry[1]

    def failed(self, job_id: str) -> tuple[int, float]:
        """Counts a failure; returns the failures so far and the delay before the next try."""
        failures = self._jobs.get(job_id, (0, 0.0))[0] + 1
        delay = min(self.cap, self.base * 2 ** (failures - 1))
        self._jobs[job_id] = (failures, time.monotonic() + delay)
        return failures, delay

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._jobs.pop(job_id, None)

    def keep_only(self, job_ids: Iterable[str]) -> None:
        """Drop the jobs no longer open (finished, vanished): nothing to retry for them."""
        keep = set(job_ids)
        self.forget([job_id for job_id in self._jobs if job_id not in keep])


class OpenJobs:
    """Fetches single open jobs for one poller, keeping a backoff per job (in memory)."""

    def __init__(
        self,
        client: ElasticPathClient,
        store: Store,
        source: Source,
        log: Any,
        stats: Counter[str],
        *,
        retry_base: float,
        retry_cap: float,
    ) -> None:
        self.client = client
        self.store = store
        self.source: Source = source
        self._log = log
        self._stats = stats
        self._backoff = _Backoff(retry_base, retry_cap)

    def keep_only(self, open_ids: Iterable[str]) -> None:
        self._backoff.keep_only(open_ids)

    async def fetch(self, report: CycleReport, job_id: str) -> Any | None:
        """The job's record; None when it vanished, failed for good, or is backing off."""
        if self._backoff.waiting(job_id):
            report.deferred += 1
            return None
        fetch = self.client.get_pcm_job if self.source == "pcm" else self.client.get_v2_job
        try:
            record = await fetch(job_id)
        except NotFound:
            await self.store.forget_open(self.source, job_id)
            self._log.info("job_vanished", job_id=job_id)
            return None
        except TransientError:
            raise  # the API itself is in trouble: the whole cycle backs off
        except ApiError as exc:
            failures, delay = self._backoff.failed(job_id)
            report.fetch_failed += 1
            self._stats["job_fetch_failures"] += 1
            self._log.warning(
                "job_fetch_failed",
                job_id=job_id,
                error=str(exc),
                failures=failures,
                retry_in=round(delay, 1),
            )
            return None
        self._backoff.forget([job_id])
        return record
