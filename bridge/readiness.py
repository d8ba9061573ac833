"""Readiness of one bridge process: Redis answers and every background loop is alive.

The check asks its bridge only for `redis` and `loop_states()`, so whatever runs the loops
(plain tasks today, a supervisor tomorrow) just has to report them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

REDIS_PING_TIMEOUT = 2.0  # seconds; a probe must answer even when Redis hangs


@dataclass(frozen=True, slots=True)
class LoopState:
    name: str
    alive: bool
    last_error: str | None = None


class HasLoops(Protocol):
    redis: Any

    def loop_states(self) -> list[LoopState]: ...


def task_states(tasks: Iterable[asyncio.Task[Any]]) -> list[LoopState]:
    """LoopStates of plain asyncio tasks: a task that is done is a loop that died."""
    states = []
    for task in tasks:
        if not task.done():
            states.append(LoopState(task.get_name(), True))
        elif task.cancelled():
            states.append(LoopState(task.get_name(), False, "cancelled"))
        elif task.exception() is not None:
            states.append(LoopState(task.get_name(), False, repr(task.exception())))
        else:
            states.append(LoopState(task.get_name(), False, "returned"))
    return states


async def check(bridge: HasLoops) -> tuple[list[str], list[LoopState]]:
    """Why the bridge is not ready (empty when it is), and the state of each loop."""
    reasons = []
    try:
        await asyncio.wait_for(bridge.redis.ping(), REDIS_PING_TIMEOUT)
    except TimeoutError:
        reasons.append(f"redis did not answer within {REDIS_PING_TIMEOUT:g} s")
    except Exception as exc:
        reasons.append(f"redis unreachable: {type(exc).__name__}: {exc}")
    loops = bridge.loop_states()
    if not loops:
        reasons.append("no loop is running (the bridge has not started or has stopped)")
    for loop in loops:
        if not loop.alive:
            reasons.append(f"loop {loop.name} is not running: {loop.last_error}")
    return reasons, loops
