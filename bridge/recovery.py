"""Noticing that Redis lost a poller's state, and which jobs a recovery baseline announces.

Redis without persistence forgets everything on a restart (so do FLUSHDB and a failover to a
lagging replica). A poller that keeps going on an empty Redis would take every job for
history and record it silently: a job that failed meanwhile would never be announced. So each
poller remembers, in memory, that its baseline was done and when its last successful poll
began (a process waiting for the lease follows the metas of the one polling, so it knows
too); when the baseline marker vanishes it logs `state_lost` and runs the baseline again in
recovery mode: a job whose timestamps say it changed after that poll gets its event, every
other job is recorded silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bridge.jobs import Job, format_epoch
from bridge.store import last_activity

# Seconds before the last poll that still count as "after" it: the API's clock may differ
# from ours, and a job may have changed while that poll was reading it.
RECOVERY_MARGIN = 10.0


class StateLost(Exception):
    """An observation found the store's state marker gone: Redis lost its data mid-cycle."""


@dataclass(frozen=True, slots=True)
class Metas:
    """The meta fields one poll cycle starts from (None: absent)."""

    baseline: str | None
    baseline_started: str | None
    full_scan: str | None
    last_poll_start: str | None
    last_poll: str | None
    recover_after: str | None

    @classmethod
    def fields(cls, source: str) -> list[str]:
        return [f"{name}:{source}" for name in cls.__dataclass_fields__]


class StateWatch:
    """What one poller saw of its state in Redis, kept where a loss of Redis cannot reach."""

    def __init__(self, log: Any, margin: float = RECOVERY_MARGIN) -> None:
        self._log = log
        self.margin = margin
        self.baseline_seen = False
        self.baseline_started: str | None = None
        self.last_poll_start: float | None = None  # of the latest successful cycle, any process

    def check(self, metas: Metas) -> float | None:
        """Whether this cycle recovers, and from when: changes after the returned moment emit.

        Logs `state_lost` (once per loss) when a baseline seen done has vanished.
        """
        if metas.baseline is not None:
            self.follow(metas)
            return None
        if metas.recover_after is not None:  # a recovery under way (this process or another)
            return float(metas.recover_after)
        if not self.baseline_seen:
            return None  # a first start, or a first baseline still running
        self.baseline_seen = False
        since = self.last_poll_start if self.last_poll_start is not None else time.time()
        self._log.error(
            "state_lost",
            reason="the baseline marker is gone from Redis (restarted without persistence, "
            "flushed, or failed over)",
            last_poll_started_at=format_epoch(self.last_poll_start),
        )
        return since - self.margin

    def follow(self, metas: Metas) -> None:
        """Remember what the metas say of a state that is there: read by this process's own
        cycles, and by a process waiting for the lease while another polls (bridge.leases),
        so that whichever process polls after a loss notices it and recovers."""
        if metas.baseline is not None:
            self.baseline_seen = True
            self.baseline_started = metas.baseline_started or self.baseline_started
            # last_poll (when a cycle ended) stands in for data written before last_poll_start.
            self._saw_poll(metas.last_poll_start or metas.last_poll)

    def baseline_completed(self) -> None:
        self.baseline_seen = True

    def polled(self, started: float) -> None:
        """A cycle that began at `started` (epoch seconds) completed."""
        self._saw_poll(started)

    def _saw_poll(self, started: float | str | None) -> None:
        if started is not None:
            self.last_poll_start = max(self.last_poll_start or 0.0, float(started))


def changed_after(job: Job, moment: float) -> bool:
    """Whether the job's timestamps say it changed after `moment`; a job without any did."""
    activity = last_activity(job)
    return activity is None or activity > moment
