"""A bounded set of workers running queued work one item after another.

A lane could start a task per delivery and bound them with a semaphore, but then each
delivery costs a task, a future and several callbacks of the event loop, and most of those
tasks only wait for the semaphore. A worker takes the next item as soon as one ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.tasks import finish

Work = Callable[[], Awaitable[None]]


class Workers:
    """Runs submitted work, at most `size` items at once, in the order submitted.

    `failed(tag, error)` hears of every item that raised (a cancelled one too, whose
    CancelledError then goes on); `ended()` of every item that ended, however it ended.
    """

    def __init__(
        self,
        size: int,
        failed: Callable[[Any, BaseException], None],
        ended: Callable[[], None],
    ) -> None:
        self.size = size
        self._failed = failed
        self._ended = ended
        self._queue: deque[tuple[Work, Any]] = deque()
        self._busy = 0  # workers that have not yet found the queue empty
        self._active = 0  # items under way
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Items under way or waiting for a worker."""
        return len(self._queue) + self._active

    def submit(self, work: Work, tag: Any = None) -> None:
        self._queue.append((work, tag))
        if self._busy < self.size:
            self._busy += 1
            worker = asyncio.ensure_future(self._work())
            self._tasks.add(worker)
            worker.add_done_callback(self._tasks.discard)

    async def finish(self, grace: float) -> None:
        """Let the workers run what is queued for up to `grace` seconds; then cancel them.
        What never started is dropped."""
        await finish(set(self._tasks), grace=grace)
        self._queue.clear()

    async def _work(self) -> None:
        try:
            while self._queue:
                work, tag = self._queue.popleft()
                self._active += 1
                try:
                    await work()
                except BaseException as exc:
                    self._failed(tag, exc)
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    self._active -= 1
                    self._ended()
        finally:
            # In the step that found the queue empty: work submitted from now on gets a
            # worker of its own.
            self._busy -= 1
