"""Background tasks: supervised loops that are restarted when they die, and a clean shutdown.

A loop is a coroutine function of the stop event (`Poller.run`, `Dispatcher.run`, ...) that
runs until the event is set. Under a `Supervisor`, a loop that raises or returns early is
logged with its error (`loop_crashed`), counted, and started again after an exponential
backoff; `Supervisor.states()` tells meanwhile which loops are alive, for /readyz and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

CANCEL_WAIT = 5.0  # seconds a cancelled task gets before we stop waiting for it
BACKOFF_FIRST = 0.5  # seconds before the first restart of a loop that died
BACKOFF_MAX = 30.0  # the backoff doubles with each death in a row, up to this
HEALTHY_AFTER = 60.0  # a loop that ran this long before it died starts from BACKOFF_FIRST again

Loop = Callable[[asyncio.Event], Awaitable[None]]
Step = Callable[[], Awaitable[Any]]


class LoopEnded(RuntimeError):
    """A loop returned although nobody asked it to stop."""


@dataclass(frozen=True, slots=True)
class LoopState:
    """One supervised loop as others may read it (a snapshot: it never changes)."""

    name: str
    alive: bool  # running now; False while waiting out a backoff, and once stopped
    restarts: int  # times it died; each death is followed by a restart unless stopping
    last_error: str | None  # "<type>: <text>" of its last death
    since: float  # epoch seconds: when it entered its present state


def describe(exc: BaseException) -> str:
    """Type and text of an error (`repr` of some redis errors loses the text)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Supervisor:
    """Runs named loops, restarts those that die, and reports on them.

    `children`: supervisors whose loops `states()` lists too (the dispatcher's own loops
    under the bridge's), so one call answers "is every loop of this process alive?".
    """

    def __init__(self, children: Iterable[Supervisor] = ()) -> None:
        self.backoff_first = BACKOFF_FIRST
        self.backoff_max = BACKOFF_MAX
        self.healthy_after = HEALTHY_AFTER
        self._children = list(children)
        self._states: dict[str, LoopState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, loop: Loop, stop: asyncio.Event) -> None:
        """Run `loop(stop)` under supervision, as a task called `name`, until `stop` is set."""
        running = self._tasks.get(name)
        if running is not None and not running.done():
            raise RuntimeError(f"loop {name!r} is already running")
        previous = self._states.get(name)
        restarts, last_error = (previous.restarts, previous.last_error) if previous else (0, None)
        self._states[name] = LoopState(name, True, restarts, last_error, time.time())
        self._tasks[name] = asyncio.create_task(self._supervise(name, loop, stop), name=name)

    def states(self) -> list[LoopState]:
        """Every loop of this supervisor and of its children, in the order they were started."""
        return [*self._states.values(), *(s for c in self._children for s in c.states())]

    def adopt(self, child: Supervisor) -> None:
        """List `child`'s loops in `states()` too (a lane started while running)."""
        if child not in self._children:
            self._children.append(child)

    def disown(self, child: Supervisor) -> None:
        if child in self._children:
            self._children.remove(child)

    async def finish(self, grace: float) -> None:
        """End every loop: `grace` seconds to see the (already set) stop event, then cancel."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await finish(tasks, grace)

    async def retire(self, name: str, grace: float) -> None:
        """End one loop, whose own stop event the caller has set, and forget it: a loop that
        is no longer wanted (a lane removed, a store removed from the config) is not a dead
        one to report."""
        task = self._tasks.pop(name, None)
        if task is not None:
            await finish([task], grace)
        if task is None or task.done():  # one stuck in a library still updates its state
            self._states.pop(name, None)

    async def _supervise(self, name: str, loop: Loop, stop: asyncio.Event) -> None:
        deaths = 0  # in a row: the backoff grows with them
        try:
            while True:
                started = time.monotonic()
                error = await _run_once(loop, stop)
                if error is None:
                    return
                if time.monotonic() - started >= self.healthy_after:
                    deaths = 0
                deaths += 1
                delay = min(self.backoff_max, self.backoff_first * 2 ** (deaths - 1))
                state = self._update(name, alive=False, last_error=describe(error), died=True)
                log.error(
                    "loop_crashed",
                    loop=name,
                    error=str(error),
                    error_type=type(error).__name__,
                    restarts=state.restarts,
                    retry_in=None if stop.is_set() else delay,
                    exc_info=error,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
                self._update(name, alive=True)
                log.info("loop_restarted", loop=name, restarts=state.restarts)
        finally:
            self._update(name, alive=False)

    def _update(
        self, name: str, *, alive: bool, last_error: str | None = None, died: bool = False
    ) -> LoopState:
        state = self._states[name]
        changed = died or alive != state.alive
        state = LoopState(
            name,
            alive,
            state.restarts + 1 if died else state.restarts,
            last_error if died else state.last_error,
            time.time() if changed else state.since,
        )
        self._states[name] = state
        return state


async def _run_once(loop: Loop, stop: asyncio.Event) -> BaseException | None:
    """Run the loop once; what killed it, or None when it ended because it was told to."""
    try:
        await loop(stop)
    except asyncio.CancelledError as exc:
        if _being_cancelled() or stop.is_set():
            raise
        return exc  # a library's stray CancelledError: nobody cancelled or stopped this loop
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # anything else that escaped the loop is a death
        return exc
    if stop.is_set() or _being_cancelled():  # a loop may swallow its cancellation and end
        return None
    return LoopEnded("the loop returned before the stop")


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def finish(tasks: Iterable[asyncio.Task[None]], grace: float) -> None:
    """Give `tasks` up to `grace` seconds, then cancel the rest; look at how every one ended.

    A task that ignores its cancellation (a library swallowing CancelledError) is logged and
    left behind rather than hanging the shutdown of everything else. A task that failed is
    logged, whenever it failed: as arq's worker does, nothing finishes unseen.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    if grace > 0 and pending:
        _done, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        _done, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT)
        if stuck:
            log.warning("tasks_did_not_stop", tasks=sorted(t.get_name() for t in stuck))
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            log.error(
                "task_failed",
                task=task.get_name(),
                error=str(error),
                error_type=type(error).__name__,
                exc_info=error,
            )


async def repeat(stop: asyncio.Event, step: Step, pause: float) -> None:
    """Run `step` until stopped; a step that returns True has more work and runs again.

    A failed step is retried here with backoff; what escapes (not an Exception, or a stray
    CancelledError) ends the loop, and its supervisor restarts it.
    """
    failures = 0
    while not stop.is_set():
        try:
            more = await step()
            failures = 0
            wait = 0.0 if more is True else pause
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            wait = min(30.0, 0.5 * 2**failures)
            name = getattr(step, "__name__", repr(step))
            log.warning("dispatch_loop_failed", step=name, error=describe(exc), retry_in=wait)
        if wait:
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass
