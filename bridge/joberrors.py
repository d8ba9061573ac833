"""A failed job's error messages for its event: fetched with patience, cut to a bounded size."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bridge.elasticpath import ApiError, ElasticPathClient, MalformedResponse, TransientError
from bridge.jobs import Job

# A failed job's event waits this long (seconds) for its /errors, then goes without them.
ERRORS_PATIENCE = 300.0
# 20 errors of 1 MB each must not make a 20 MB event: each message and the whole list are cut.
MAX_MESSAGE_BYTES = 2048
MAX_ERRORS_BYTES = 64 * 1024
TRUNCATED = "... (truncated)"


def cut_message(message: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """`message`, or its start and TRUNCATED, at most `max_bytes` of UTF-8 either way."""
    encoded = message.encode()
    if len(encoded) <= max_bytes:
        return message
    keep = max(0, max_bytes - len(TRUNCATED))
    return encoded[:keep].decode(errors="ignore") + TRUNCATED


def cut_errors(
    messages: Sequence[str],
    *,
    limit: int,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_total_bytes: int = MAX_ERRORS_BYTES,
) -> list[dict[str, str]]:
    """At most `limit` messages, each cut, together within `max_total_bytes`.

    When the total runs out, a last message says how many were left out.
    """
    errors: list[dict[str, str]] = []
    used = 0
    kept = messages[:limit]
    for index, message in enumerate(kept):
        text = cut_message(message, max_message_bytes)
        size = len(text.encode())
        if used + size > max_total_bytes:
            errors.append({"message": f"... ({len(kept) - index} more errors not shown)"})
            break
        errors.append({"message": text})
        used += size
    return errors


class JobErrors:
    """The `errors` of a failed job's event, for one poller."""

    def __init__(self, client: ElasticPathClient, limit: int, log: Any) -> None:
        self.client = client
        self.limit = limit
        self._log = log
        # Failed jobs whose /errors would not answer: job id -> when that first happened.
        self._waiting: dict[str, float] = {}

    async def of(self, job: Job) -> list[dict[str, str]] | None:
        """The job's errors, cut to size; None while they may still come (the event waits)."""
        if job.source != "pcm":
            return cut_errors([job.error], limit=self.limit) if job.error else []
        try:
            found = await self.client.get_pcm_job_errors(job.id, self.limit)
        except (TransientError, MalformedResponse) as exc:
            since = self._waiting.setdefault(job.id, time.monotonic())
            if time.monotonic() - since < ERRORS_PATIENCE:
                self._log.info("job_errors_deferred", job_id=job.id, error=str(exc))
                return None
            self._log.warning("job_errors_unavailable", job_id=job.id, error=str(exc))
            found = []
        except ApiError as exc:
            self._log.warning("job_errors_unavailable", job_id=job.id, error=str(exc))
            found = []
        self._waiting.pop(job.id, None)
        return cut_errors([e["message"] for e in found], limit=self.limit)
