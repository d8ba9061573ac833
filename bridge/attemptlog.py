"""The attempt log and health of one subscription, written in batches (group commit).

Every attempt is recorded before its delivery counts as done (before its outbox entry is
acknowledged): `add` returns once the attempt is in Redis. Attempts that end while a batch
is being written go in the next one, so under load one script call carries many attempts,
and alone an attempt waits one round trip, as it did with a call of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis

from bridge.deliveries import ATTEMPTS_PER_EVENT, Bounds
from bridge.jobs import now_iso
from bridge.keys import attempts_key, health_key
from bridge.sinks import DeliveryResult

BATCH_MAX = 500  # attempts per script call

# Attempts in the order they ended: the subscription's log, each event's log, and the health
# hash as the attempts one by one would leave it.
RECORD_ATTEMPTS = """
local subscription_log = KEYS[1]
local health = KEYS[2]
local subscription_cap = ARGV[1]
local event_cap = tonumber(ARGV[2])
local retention = ARGV[3]
local succeeded, failed, failing_since, last_error = nil, nil, nil, nil
for i = 3, #KEYS do
  local at = 4 + (i - 3) * 4
  local record, ok, now = ARGV[at], ARGV[at + 1] == '1', ARGV[at + 2]
  redis.call('XADD', subscription_log, 'MAXLEN', '~', subscription_cap, '*', 'record', record)
  redis.call('LPUSH', KEYS[i], record)
  redis.call('LTRIM', KEYS[i], 0, event_cap - 1)
  redis.call('EXPIRE', KEYS[i], retention)
  if ok then
    succeeded = now
    failing_since = nil
  else
    failed = now
    last_error = ARGV[at + 3]
    failing_since = failing_since or now
  end
end
if succeeded then
  redis.call('HSET', health, 'last_success_at', succeeded)
  if failing_since then
    redis.call('HSET', health, 'failing_since', failing_since)
  else
    redis.call('HDEL', health, 'failing_since')
  end
elseif failing_since then
  redis.call('HSETNX', health, 'failing_since', failing_since)
end
if failed then
  redis.call('HSET', health, 'last_failure_at', failed, 'last_error', last_error)
end
return 1
"""


def _record(
    subscription: str, event_id: str, attempt: int, result: DeliveryResult
) -> dict[str, Any]:
    return {
        "subscription": subscription,
        "event_id": event_id,
        "attempt": attempt,
        "at": now_iso(),
        "ok": int(result.ok),
        "status": result.status if result.status is not None else "",
        "duration_ms": round(result.duration_ms, 1),
        "reason": result.reason,
        "response": result.response_excerpt[:1024],
    }


class AttemptLog:
    """One subscription's attempts on their way to Redis."""

    def __init__(self, redis: aioredis.Redis, subscription: str, bounds: Bounds) -> None:
        self.subscription = subscription
        self.bounds = bounds
        self._script = redis.register_script(RECORD_ATTEMPTS)
        self._keys: list[str] = []  # the next batch: each attempt's event log ...
        self._args: list[Any] = []  # ... and its record, outcome, time and reason
        self._written: asyncio.Future[None] | None = None  # resolved once the next batch is
        self._writer: asyncio.Task[None] | None = None

    async def add(self, event_id: str, attempt: int, result: DeliveryResult) -> None:
        """Record one attempt; returns once it is written (raises if writing failed)."""
        record = json.dumps(_record(self.subscription, event_id, attempt, result))
        self._keys.append(attempts_key(self.subscription, event_id))
        self._args += [record, int(result.ok), time.time(), result.reason]
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
            self._written.add_done_callback(_retrieve)
        written = self._written
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        # Shielded: a delivery cancelled while it waits must not cancel the batch it is in.
        await asyncio.shield(written)

    async def _write_all(self) -> None:
        while self._keys:
            keys, self._keys = self._keys, []
            args, self._args = self._args, []
            written, self._written = self._written, None
            assert written is not None
            try:
                for start in range(0, len(keys), BATCH_MAX):
                    await self._write(
                        keys[start : start + BATCH_MAX], args[start * 4 : (start + BATCH_MAX) * 4]
                    )
            except Exception as exc:
                written.set_exception(exc)
            except BaseException:
                written.cancel()
                raise
            else:
                written.set_result(None)

    async def _write(self, event_logs: list[str], attempts: list[Any]) -> None:
        bounds = self.bounds
        await self._script(
            keys=[attempts_key(self.subscription), health_key(self.subscription), *event_logs],
            args=[bounds.attempt_log, ATTEMPTS_PER_EVENT, int(bounds.attempts), *attempts],
        )

    async def close(self) -> None:
        """Wait for the batch being written (a stopping lane's last attempts)."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer])


def _retrieve(future: asyncio.Future[None]) -> None:
    # Every waiter may be gone: a failed batch's error is then said by nobody, not warned of.
    if not future.cancelled():
        future.exception()
