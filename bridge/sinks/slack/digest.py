"""Digests: when failures come in a storm, those past `group_threshold` within `group_window`
wait in Redis and go out together, as one message per window."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bridge.keys import slack_key
from bridge.sinks.base import DeliveryResult
from bridge.sinks.slack.api import SHORT_RETRY_AFTER, SlackApi
from bridge.sinks.slack.messages import MESSAGE_TTL
from bridge.sinks.slack.render import ERROR_CHARS, JobView, render_digest

if TYPE_CHECKING:
    import redis.asyncio as aioredis

BACKOFF = (2.0, 4.0, 8.0)  # waits between the tries of one digest send
MAX_WAIT = 60.0
OUTCOME_TTL = 86_400  # seconds a sent digest answers redeliveries of its events
OUTCOME_POLL = 1.0  # seconds between looks for the outcome a replica's send wrote
NOT_FOLDED, FOLDED, ALREADY_SENT = 0, 1, 2  # what fold() did with an event


def event_key(view: JobView) -> str:
    """The event's name in the digest."""
    return view.event_id or f"{view.job_id}/{view.status}"


# The digest buffer lives in Redis so that a restart loses nothing. Scripts do each
# check-and-change in one step: two replicas of the bridge share one subscription's buffer.
_FOLD = """
local recent = KEYS[1]
local digest = KEYS[2]
local opened = KEYS[3]
local inflight = KEYS[4]
local outcome = KEYS[5]             -- what the last digest carrying this event did with it
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local event_id = ARGV[4]
local entry = ARGV[5]
local ttl = tonumber(ARGV[6])
local sent = redis.call('GET', outcome)
if sent == 'ok' then
  return 2                          -- a digest carried it already (a redelivery)
end
if sent then
  redis.call('DEL', outcome)        -- that digest failed: this is the event's retry
end
-- A redelivered event that is already waiting for (or in) a digest stays there once.
if redis.call('HEXISTS', digest, event_id) == 1 then
  return 1
end
if redis.call('HEXISTS', inflight, event_id) == 1 then
  return 1
end
redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - window)
redis.call('ZADD', recent, 'NX', now, event_id)
redis.call('EXPIRE', recent, math.ceil(window) + 60)
if redis.call('ZCARD', recent) <= threshold then
  return 0
end
redis.call('HSET', digest, event_id, entry)
redis.call('SET', opened, ARGV[1], 'NX')
redis.call('EXPIRE', digest, ttl)
redis.call('EXPIRE', opened, ttl)
return 1
"""

# A leftover in-flight digest (the sender died or was stopped) goes before the open buffer.
_TAKE = """
local digest = KEYS[1]
local opened = KEYS[2]
local inflight = KEYS[3]
local lease = KEYS[4]
local token = ARGV[1]
local lease_ms = ARGV[2]
if not redis.call('SET', lease, token, 'NX', 'PX', lease_ms) then
  return false
end
if redis.call('EXISTS', inflight) == 0 then
  if redis.call('EXISTS', digest) == 0 then
    redis.call('DEL', lease)
    return false
  end
  redis.call('RENAME', digest, inflight)
  redis.call('DEL', opened)
end
return redis.call('HGETALL', inflight)
"""

# Ends a send: the digest is done with (or kept for a restart), and each of its events'
# outcome is written where every replica's waiting delivery reads it.
_RELEASE = """
local inflight = KEYS[1]
local lease = KEYS[2]
local token = ARGV[1]
local done = ARGV[2]
local outcome = ARGV[3]
local ttl = ARGV[4]
if redis.call('GET', lease) ~= token then
  return 0
end
if done == '1' then
  redis.call('DEL', inflight)
  for i = 3, #KEYS do
    redis.call('SET', KEYS[i], outcome, 'EX', ttl)
  end
end
redis.call('DEL', lease)
return 1
"""


class Digest:
    """One subscription's digest: failures fold into it, and a task sends it when it is due.

    A folded event's delivery waits for the send of the digest that carries it (`outcome`),
    so it is acknowledged only once Slack took the message; a digest that fails after its
    own few tries (`backoff`) fails each of its events' deliveries, which then go through
    their retries and dead letters like any other.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        subscription: str,
        api: SlackApi,
        *,
        post_url: str,
        channel: str | None,
        window: float,
        threshold: int,
        timeout: float,
        link_for: Callable[[Mapping[str, Any]], str | None],
        log: Any,
    ) -> None:
        self._redis = redis
        self._name = subscription
        self._api = api
        self._post_url = post_url
        self._channel = channel  # bot mode names the channel; a webhook has its own
        self.window = window
        self.threshold = threshold
        self._timeout = timeout
        self._link_for = link_for
        self._log = log
        self.backoff: tuple[float, ...] = BACKOFF  # an attribute so tests can shorten it
        self._recent_key = slack_key(subscription, "recent")
        self._digest_key = slack_key(subscription, "digest")
        self._opened_key = slack_key(subscription, "digest", "opened")
        self._inflight_key = slack_key(subscription, "digest", "inflight")
        self._lease_key = slack_key(subscription, "digest", "lease")
        self.stats_key = slack_key(subscription, "stats")
        self._fold_script = redis.register_script(_FOLD)
        self._take_script = redis.register_script(_TAKE)
        self._release_script = redis.register_script(_RELEASE)
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()  # set (and replaced) after each send from this process
        self._sender: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def start(self) -> None:
        if self.enabled and self._sender is None:
            # Its first round also sends a digest left over from before a restart.
            self._closing = False
            self._sender = asyncio.create_task(self._run(), name=f"slack-digest-{self._name}")

    async def stop(self) -> None:
        # An unsent digest stays in Redis; the next start() sends it.
        self._closing = True
        if self._sender is not None:
            self._sender.cancel()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None

    async def fold(self, view: JobView) -> int:
        """Count a failure: NOT_FOLDED (send it on its own), FOLDED (it waits for the digest),
        or ALREADY_SENT (a digest carried it before: this is a redelivery)."""
        entry = {
            "t": time.time(),
            "event_id": view.event_id,
            "job_id": view.job_id,
            "job_type": view.job_type,
            "store": view.store,
            "source": view.source,
            "status": view.status,
            "error": view.errors[0][:ERROR_CHARS] if view.errors else "",
            "errors": len(view.errors),
        }
        key = event_key(view)
        folded = await self._fold_script(
            keys=[
                self._recent_key,
                self._digest_key,
                self._opened_key,
                self._inflight_key,
                self._outcome_key(key),
            ],
            args=[
                repr(time.time()),
                repr(self.window),
                self.threshold,
                key,
                json.dumps(entry, ensure_ascii=False),
                MESSAGE_TTL,
            ],
        )
        if folded == FOLDED:
            self._wake.set()
        return int(folded)

    async def outcome(self, view: JobView) -> DeliveryResult:
        """What became of the digest that carries this folded event, once it was sent (by
        this process or another); a failure after `wait_limit` seconds without one."""
        outcome_key = self._outcome_key(event_key(view))
        deadline = time.monotonic() + self.wait_limit()
        while True:
            sent = self._sent  # before the look: a send after it wakes the wait below
            raw = await self._redis.get(outcome_key)
            if raw is not None:
                return _result(raw)
            if time.monotonic() > deadline:
                return DeliveryResult(
                    ok=False, reason=f"no digest carried it within {round(self.wait_limit())} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sent.wait(), OUTCOME_POLL)

    def wait_limit(self) -> float:
        """Seconds a folded event waits for its digest: the window, then one whole send."""
        return self.window + self._lease_seconds() + 30

    def _outcome_key(self, key: str) -> str:
        return slack_key(self._name, "digest", "outcome", key)

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        # The flag, not only cancel(): redis-py's pipeline can swallow a cancellation that
        # lands while it returns its connection to the pool, and the loop would go on.
        while not self._closing:
            self._wake.clear()  # before the check: a fold during it wakes the wait below
            try:
                delay = await self._seconds_to_flush()
                if delay <= 0 and await self._flush():
                    continue
            except (RedisError, OSError) as exc:
                self._log.warning("slack_digest_check_failed", error=type(exc).__name__)
                delay = 1.0
            except Exception:
                # A bug must not silently end digests for the life of the process.
                self._log.exception("slack_digest_loop_failed")
                delay = 1.0
            if self._closing:
                return
            # Nothing here to send now; another replica may be sending, so look again soon.
            delay = max(delay, 1.0) if delay <= 0 else delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _seconds_to_flush(self) -> float:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._opened_key)
            pipe.exists(self._inflight_key)
            pipe.exists(self._lease_key)
            opened, inflight, leased = await pipe.execute()
        if inflight and not leased:
            return 0.0  # left behind by a sender that stopped
        if opened is None:
            # No digest open. Other replicas may open one without waking us: look every window.
            return self.window
        return float(opened) + self.window - time.time()

    def _lease_seconds(self) -> float:
        tries = len(self.backoff) + 1
        per_try = 2 * (self._timeout + self._api.min_interval) + SHORT_RETRY_AFTER
        return tries * per_try + sum(min(b, MAX_WAIT) for b in self.backoff) + 60

    async def _flush(self) -> bool:
        """Send the due digest; False when there was none to take."""
        token = secrets.token_hex(8)
        raw = await self._take_script(
            keys=[self._digest_key, self._opened_key, self._inflight_key, self._lease_key],
            args=[token, int(self._lease_seconds() * 1000)],
        )
        if not raw:
            return False
        entries = _entries(raw)
        if not entries:  # nothing readable in it: drop it rather than send an empty digest
            await self._release(token, None, [])
            return True
        result: DeliveryResult | None = None
        try:
            result = await self._send(entries)
        finally:
            # Stopped mid-send: keep the digest and free the lease, so a restart sends it now.
            await self._release(token, result, _keys(raw))
        await self._record(result, entries)
        return True

    async def _release(self, token: str, result: DeliveryResult | None, keys: list[str]) -> None:
        done = result is not None or not keys
        outcome = "" if result is None else ("ok" if result.ok else _failure(result))
        await self._release_script(
            keys=[self._inflight_key, self._lease_key, *(self._outcome_key(k) for k in keys)],
            args=[token, "1" if done else "0", outcome, OUTCOME_TTL],
        )
        self._sent.set()
        self._sent = asyncio.Event()

    async def _record(self, result: DeliveryResult, entries: list[dict[str, Any]]) -> None:
        jobs = [e.get("job_id") for e in entries]
        if result.ok:
            self._log.info("slack_digest_sent", events=len(entries), job_ids=jobs[:50])
            await self._redis.hincrby(self.stats_key, "digests_sent", 1)
            return
        # Not lost: each event's delivery fails with it, and is retried or dead-lettered.
        self._log.error(
            "slack_digest_failed",
            events=len(entries),
            job_ids=jobs[:50],
            reason=result.reason,
            status=result.status,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.stats_key, "digests_failed", 1)
            pipe.hincrby(self.stats_key, "digest_events_failed", len(entries))
            await pipe.execute()

    async def _send(self, entries: list[dict[str, Any]]) -> DeliveryResult:
        message = render_digest(
            entries,
            window=self.window,
            threshold=self.threshold,
            now=time.time(),
            link_for=self._link_for,
        )
        payload = {"channel": self._channel, **message} if self._channel else message
        pauses = iter(self.backoff)
        while True:
            async with self._api.lock:
                result = (await self._api.call(self._post_url, payload)).result
            pause = next(pauses, None)
            if result.ok or not result.retryable or pause is None:
                return result
            pause = min(max(pause, result.retry_after or 0.0), MAX_WAIT)
            self._log.info("slack_digest_retrying", reason=result.reason, wait=pause)
            # The lock is free meanwhile: single messages keep flowing while the digest waits.
            await asyncio.sleep(pause)


def _failure(result: DeliveryResult) -> str:
    fields = ("status", "reason", "retry_after", "retryable", "disable")
    return json.dumps({field: getattr(result, field) for field in fields})


def _result(raw: str) -> DeliveryResult:
    if raw == "ok":
        return DeliveryResult(ok=True, response_excerpt="sent in a digest")
    try:
        failed = json.loads(raw)
        return DeliveryResult(ok=False, **failed)
    except (ValueError, TypeError):
        return DeliveryResult(ok=False, reason="the digest carrying it failed")


def _keys(raw: Sequence[Any]) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k for k in raw[0::2]]


def _entries(raw: Sequence[Any]) -> list[dict[str, Any]]:
    values = [v.decode() if isinstance(v, bytes) else v for v in raw[1::2]]
    entries = []
    for value in values:
        with contextlib.suppress(ValueError, TypeError):
            entry = json.loads(value)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries
