"""Ending background tasks: a grace period to finish, then a cancellation that cannot hang."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog

log = structlog.get_logger(__name__)

CANCEL_WAIT = 5.0  # seconds a cancelled task gets before we stop waiting for it


async def finish(tasks: Iterable[asyncio.Task[None]], grace: float) -> None:
    """Give `tasks` up to `grace` seconds, then cancel the rest.

    A task that ignores its cancellation (a library swallowing CancelledError) is logged and
    left behind rather than hanging the shutdown of everything else.
    """
    tasks = [task for task in tasks if not task.done()]
    pending: set[asyncio.Task[None]] = set(tasks)
    if grace > 0 and pending:
        _done, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        _done, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT)
        if stuck:
            log.warning("tasks_did_not_stop", tasks=sorted(t.get_name() for t in stuck))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()))
