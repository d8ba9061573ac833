"""Readiness of one bridge process: Redis answers and every background loop is alive.

The check asks its bridge only for `redis` and `loop_states()` (the supervisor's view of every
loop), so it can be tested, and reused, apart from the HTTP API.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from bridge.tasks import LoopState

REDIS_PING_TIMEOUT = 2.0  # seconds; a probe must answer even when Redis hangs


class HasLoops(Protocol):
    redis: Any

    def loop_states(self) -> list[LoopState]: ...


def _loop_reason(loop: LoopState) -> str:
    if loop.last_error is None:
        return f"loop {loop.name} is not running"
    restarts = f" (restarted {loop.restarts} times)" if loop.restarts > 1 else ""
    return f"loop {loop.name} is not running{restarts}: {loop.last_error}"


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
        reasons.append("no loop is running (the bridge has not started)")
    reasons += [_loop_reason(loop) for loop in loops if not loop.alive]
    return reasons, loops
