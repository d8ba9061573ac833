"""The attempt log and health of one subscription, written in batches (group commit).

Every attempt is recorded before its delivery counts as done (before its outbox entry is
acknowledged): `add` gives a future that is done once the attempt is in Redis. A batch is
written LINGER after its first attempt (or after the batch before it), in one script call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
import structlog

from bridge import jsoncodec
from bridge.deliveries import ATTEMPTS_PER_EVENT, Bounds
from bridge.keys import attempts_key, health_key
from bridge.sinks import DeliveryResult
from bridge.tasks import describe

log = structlog.get_logger(__name__)

BATCH_MAX = 500  # attempts per script call
LINGER = 0.02  # seconds the first attempt of a batch waits for others to share its write

# Attempts in the order they ended, each '1' or '0' (it succeeded or not) and its record: the
# subscription's log, each event's log, and the health hash as the attempts one by one would
# leave it (at the time of the batch).
RECORD_ATTEMPTS = """
local subscription_log = KEYS[1]
local health = KEYS[2]
local subscription_cap = ARGV[1]
local event_cap = tonumber(ARGV[2])
local retention = ARGV[3]
local now = ARGV[4]
local succeeded, failing, last_failure = false, false, nil
for i = 3, #KEYS do
  local attempt = ARGV[i + 2]
  local record = string.sub(attempt, 2)
  redis.call('XADD', subscription_log, 'MAXLEN', '~', subscription_cap, '*', 'record', record)
  redis.call('LPUSH', KEYS[i], record)
  redis.call('LTRIM', KEYS[i], 0, event_cap - 1)
  redis.call('EXPIRE', KEYS[i], retention)
  if string.sub(attempt, 1, 1) == '1' then
    succeeded, failing = true, false
  else
    failing, last_failure = true, record
  end
end
if succeeded then
  redis.call('HSET', health, 'last_success_at', now)
  if failing then
    redis.call('HSET', health, 'failing_since', now)
  else
    redis.call('HDEL', health, 'failing_since')
  end
elseif failing then
  redis.call('HSETNX', health, 'failing_since', now)
end
if last_failure then
  local reason = cjson.decode(last_failure)['reason']
  redis.call('HSET', health, 'last_failure_at', now, 'last_error', reason)
end
return 1
"""


def _record(
    subscription: str, event_id: str, attempt: int, result: DeliveryResult, at: str
) -> dict[str, Any]:
    return {
        "subscription": subscription,
        "event_id": event_id,
        "attempt": attempt,
        "at": at,
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
        self._args: list[bytes] = []  # ... and its outcome ('1' ok) and record
        self._written: asyncio.Future[None] | None = None  # resolved once the next batch is
        self._writer: asyncio.Task[None] | None = None
        self._second = (0, "")  # the current second, formatted

    def _now(self) -> str:
        """This moment as now_iso() writes it, with each second formatted once."""
        now = time.time()
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int((now - second) * 1000):03d}Z"

    def add(self, event_id: str, attempt: int, result: DeliveryResult) -> asyncio.Future[None]:
        """Record one attempt: the future is done once it is written (or failed to be).
        Await it shielded: the batch is shared, a cancelled waiter must not cancel it."""
        record = jsoncodec.dumps(_record(self.subscription, event_id, attempt, result, self._now()))
        self._keys.append(attempts_key(self.subscription, event_id))
        self._args.append((b"1" if result.ok else b"0") + record)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
            self._written.add_done_callback(_retrieve)
        written = self._written
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        return written

    async def _write_all(self) -> None:
        while self._keys:
            await asyncio.sleep(LINGER)
            keys, self._keys = self._keys, []
            args, self._args = self._args, []
            written, self._written = self._written, None
            assert written is not None
            try:
                for start in range(0, len(keys), BATCH_MAX):
                    end = start + BATCH_MAX
                    await self._write(keys[start:end], args[start:end])
            except Exception as exc:
                log.warning(
                    "attempts_not_recorded",
                    subscription=self.subscription, attempts=len(keys), error=describe(exc),
                )  # fmt: skip
                written.set_exception(exc)
            except BaseException:
                written.cancel()
                raise
            else:
                written.set_result(None)

    async def _write(self, event_logs: list[str], attempts: list[bytes]) -> None:
        bounds = self.bounds
        await self._script(
            keys=[attempts_key(self.subscription), health_key(self.subscription), *event_logs],
            args=[
                bounds.attempt_log, ATTEMPTS_PER_EVENT, int(bounds.attempts), time.time(),
                *attempts,
            ],
        )  # fmt: skip

    async def close(self, grace: float | None = None) -> None:
        """Wait (up to `grace` seconds) for the batches being written: a stopping lane's
        last attempts."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer], timeout=grace)


def _retrieve(future: asyncio.Future[None]) -> None:
    # Every waiter may be gone: a failed batch's error is then said by nobody, not warned of.
    if not future.cancelled():
        future.exception()
