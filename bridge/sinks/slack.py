"""Slack sink: an actionable message per job (bot) or per event (incoming webhook), with digests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import structlog
import yarl
from redis.exceptions import RedisError

from bridge.httpclient import (
    EXCERPT_CHARS,
    AddressRefused,
    check_url,
    describe_connection_failure,
    make_session,
    parse_retry_after,
    read_body,
    status_text,
)
from bridge.logs import redact_text, register_secrets
from bridge.sinks import DeliveryResult, elapsed_ms
from bridge.sinks.slack_messages import (
    BUTTON_URL_MAX,
    ERROR_CHARS,
    MAIN_ERRORS_BOT,
    MAIN_ERRORS_WEBHOOK,
    JobView,
    as_int,
    as_mapping,
    cut,
    render_digest,
    render_error_thread,
    render_job_message,
)

log = structlog.get_logger(__name__)

FAILURE_STATUSES = frozenset({"failed", "stalled"})
MESSAGE_TTL = 14 * 24 * 3600  # how long a job's message stays updatable; jobs end long before
# A 429 asking for at most this long is waited out in place, once: the usual cause is Slack's
# 1 msg/s per channel, and the dispatcher's first retry (5 s, then minutes) would add more
# delay and let later updates of the same job overtake this one. Longer waits go back to the
# dispatcher, which must not have a delivery slot held for minutes.
SHORT_RETRY_AFTER = 5.0
DIGEST_BACKOFF = (2.0, 4.0, 8.0)  # waits between the tries of one digest send
DIGEST_MAX_WAIT = 60.0
_MAX_BODY = 1 << 20  # chat.postMessage echoes the message back: tens of KB at most
_CODE = re.compile(r"[a-z0-9_]{1,64}")
# chat.update cannot change these messages any more: post a new one instead.
_MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})

_GONE, _BUG, _RETRY = "gone", "bug", "retry"
# Slack's error codes (Web API `error` field, incoming-webhook response text) and what they
# mean for the subscription. Unknown codes are retried: the retry schedule and disable_after
# bound the cost of a code Slack adds later.
SLACK_ERRORS: dict[str, tuple[str, str]] = {
    "channel_not_found": (_GONE, "the channel does not exist or the bot cannot see it"),
    "channel_is_archived": (_GONE, "the channel is archived"),
    "is_archived": (_GONE, "the channel is archived"),
    "no_service": (_GONE, "the incoming webhook was removed or its Slack app uninstalled"),
    "no_active_hooks": (_GONE, "the incoming webhook is turned off"),
    "no_team": (_GONE, "the Slack workspace no longer exists"),
    "team_disabled": (_GONE, "the Slack workspace is disabled"),
    "invalid_token": (_GONE, "the incoming webhook URL is not valid"),
    "action_prohibited": (_GONE, "an admin has restricted posting to this channel"),
    "posting_to_general_channel_denied": (_GONE, "only admins may post to this channel"),
    "restricted_action": (_GONE, "a workspace setting prevents posting to this channel"),
    "not_in_channel": (_GONE, "the bot is not in the channel (invite it with /invite)"),
    "invalid_auth": (_GONE, "the bot token is not valid"),
    "not_authed": (_GONE, "Slack did not accept the bot token"),
    "token_revoked": (_GONE, "the bot token was revoked"),
    "token_expired": (_GONE, "the bot token has expired"),
    "account_inactive": (_GONE, "the bot's user or app was deactivated"),
    "missing_scope": (_GONE, "the bot token lacks the chat:write scope"),
    "ekm_access_denied": (_GONE, "the workspace's encryption keys were revoked"),
    "invalid_payload": (_BUG, "the message was malformed"),
    "invalid_blocks": (_BUG, "the message blocks were refused"),
    "invalid_blocks_format": (_BUG, "the message blocks were malformed"),
    "invalid_attachments": (_BUG, "the message attachments were refused"),
    "too_many_attachments": (_BUG, "the message had too many attachments"),
    "msg_too_long": (_BUG, "the message was too long"),
    "no_text": (_BUG, "the message had no text"),
    "invalid_arguments": (_BUG, "the request arguments were refused"),
    "invalid_json": (_BUG, "the request body was not valid JSON"),
    "json_not_object": (_BUG, "the request body was not a JSON object"),
    "invalid_charset": (_BUG, "the request charset was refused"),
    "internal_error": (_RETRY, "Slack had an internal error"),
    "fatal_error": (_RETRY, "Slack had an internal error"),
    "service_unavailable": (_RETRY, "Slack is unavailable"),
    "request_timeout": (_RETRY, "Slack timed out"),
}

# The digest buffer lives in Redis so that a restart loses nothing. Scripts do each
# check-and-change in one step: two replicas of the bridge share one subscription's buffer.
_FOLD = """
local recent = KEYS[1]
local digest = KEYS[2]
local opened = KEYS[3]
local inflight = KEYS[4]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local event_id = ARGV[4]
local entry = ARGV[5]
local ttl = tonumber(ARGV[6])
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

_RELEASE = """
local inflight = KEYS[1]
local lease = KEYS[2]
local token = ARGV[1]
local done = ARGV[2]
if redis.call('GET', lease) ~= token then
  return 0
end
if done == '1' then
  redis.call('DEL', inflight)
end
redis.call('DEL', lease)
return 1
"""


class SlackSink:
    """Posts job events to one Slack channel, through an incoming webhook or as a bot.

    Bot mode keeps one message per job and edits it as the job moves; a failed job's errors
    go into a thread under it. Webhook mode cannot edit, so it posts one message per event.
    When failures come in a storm, the ones past `group_threshold` within `group_window`
    become one digest message instead of one message each.
    """

    def __init__(
        self,
        name: str,
        redis: aioredis.Redis,
        *,
        webhook_url: str | None = None,
        token: str | None = None,
        channel: str | None = None,
        api_base_url: str = "https://slack.com/api/",
        link_template: str | None = None,
        group_window: float = 30.0,
        group_threshold: int = 5,
        timeout: float = 15.0,
        allow_private_networks: bool = False,
        min_interval: float = 1.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        webhook_url, token = webhook_url or None, token or None
        if webhook_url and token:
            raise ValueError("set webhook_url (incoming webhook) or token (bot), not both")
        if not webhook_url and not token:
            raise ValueError("set webhook_url (incoming webhook) or token + channel (bot)")
        if token and not channel:
            raise ValueError("channel is required with token (bot mode)")
        if webhook_url:
            check_url(webhook_url)
            parsed = yarl.URL(webhook_url)
            # The path alone is the credential too: mask it wherever it might be quoted.
            register_secrets([webhook_url, parsed.raw_path_qs if len(parsed.path) > 8 else None])
        else:
            check_url(api_base_url)
        register_secrets([token])
        if link_template is not None:
            _check_link_template(link_template)
        if group_threshold < 0 or min_interval < 0:
            raise ValueError("group_threshold and min_interval must not be negative")
        self.name = name
        self._redis = redis
        self._token = token
        self._channel = channel
        self._api_base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        # Where new messages go: the webhook itself, or chat.postMessage.
        self._post_url = yarl.URL(webhook_url) if webhook_url else self._api("chat.postMessage")
        self._link_template = link_template
        self._group_window = group_window
        self._group_threshold = group_threshold
        self._timeout = timeout
        self._allow_private_networks = allow_private_networks
        self._min_interval = min_interval
        self._session = session
        self._owns_session = session is None
        # Waits between the tries of one digest send; an attribute so tests can shorten it.
        self.digest_backoff: tuple[float, ...] = DIGEST_BACKOFF
        # One send at a time, in arrival order (asyncio.Lock is FIFO): Slack allows about one
        # message per second per channel or webhook, and a job's events must not race to
        # create two messages for it.
        self._lock = asyncio.Lock()
        self._next_send = 0.0  # time.monotonic() before which the next request waits
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        prefix = f"jb:slack:{{{name}}}"
        self._key_prefix = prefix
        self._recent_key = f"{prefix}:recent"
        self._digest_key = f"{prefix}:digest"
        self._opened_key = f"{prefix}:digest:opened"
        self._inflight_key = f"{prefix}:digest:inflight"
        self._lease_key = f"{prefix}:digest:lease"
        self.stats_key = f"{prefix}:stats"
        self._fold_script = redis.register_script(_FOLD)
        self._take_script = redis.register_script(_TAKE)
        self._release_script = redis.register_script(_RELEASE)
        self._log = log.bind(subscription=name, mode="bot" if token else "webhook")

    @property
    def _bot(self) -> bool:
        return self._token is not None

    @property
    def _grouping(self) -> bool:
        return self._group_window > 0

    async def start(self) -> None:
        if self._session is None:
            self._session = make_session(
                allow_private_networks=self._allow_private_networks, timeout=self._timeout
            )
        if self._grouping and self._flusher is None:
            # Its first round also sends a digest left over from before a restart.
            self._flusher = asyncio.create_task(
                self._flush_loop(), name=f"slack-digest-{self.name}"
            )

    async def close(self) -> None:
        # An unsent digest stays in Redis; the next start() sends it.
        self._closing = True
        if self._flusher is not None:
            self._flusher.cancel()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def job_key(self, store: str, source: str, job_id: str) -> str:
        """Where the ts and channel of a job's message are kept (bot mode)."""
        return f"{self._key_prefix}:{store}:{source}:{job_id}"

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult:
        if self._session is None:
            raise RuntimeError(f"slack sink {self.name!r} used before start()")
        started = time.perf_counter()
        view = JobView.of(event)
        action = "folded"
        try:
            if self._grouping and view.status in FAILURE_STATUSES and await self._fold(view):
                if self._bot:
                    await self._refresh_quietly(view)
                result = DeliveryResult(ok=True, response_excerpt="folded into the digest")
            elif self._bot:
                result, action = await self._to_channel(view, quiet=False)
            else:
                async with self._lock:
                    result = (await self._call(self._post_url, self._new(view))).result
                action = "posted"
        except (RedisError, OSError) as exc:
            result = DeliveryResult(
                ok=False, reason=f"Redis failed while preparing the message ({type(exc).__name__})"
            )
        result = replace(result, duration_ms=elapsed_ms(started))
        if result.ok:
            self._log.info(
                "slack_message_sent"
                if action in ("posted", "updated")
                else f"slack_event_{action}",
                event_id=view.event_id,
                job_id=view.job_id,
                status=view.status,
                action=action,
            )
        else:
            self._log.debug(
                "slack_delivery_failed",
                event_id=view.event_id,
                job_id=view.job_id,
                status=result.status,
                reason=result.reason,
                retryable=result.retryable,
                disable=result.disable,
            )
        return result

    # Bot mode: one message per job, edited in place.

    async def _refresh_quietly(self, view: JobView) -> None:
        # An edit adds no message to the channel, and it keeps the job's own message from
        # saying "started" forever. Best effort: the digest carries the news either way.
        try:
            await self._to_channel(view, quiet=True)
        except (RedisError, OSError) as exc:
            self._log.info("slack_message_update_failed", reason=type(exc).__name__)

    async def _to_channel(self, view: JobView, *, quiet: bool) -> tuple[DeliveryResult, str]:
        """Post or update the job's message, then thread its errors. `quiet`: edit only."""
        key = self.job_key(view.store, view.source, view.job_id)
        async with self._lock:
            stored = _decoded(await self._redis.hgetall(key))
            if stored and as_int(stored.get("seq")) > view.sequence:
                # A retried older event: the message already shows a later state of the job.
                return DeliveryResult(
                    ok=True, response_excerpt="message shows a later state"
                ), "skipped"
            message = self._render(view)
            reply: _Reply | None = None
            action = "updated"
            if stored.get("ts") and stored.get("channel"):
                reply = await self._call(
                    self._api("chat.update"),
                    {"channel": stored["channel"], "ts": stored["ts"], **message},
                )
                if reply.data.get("error") in _MESSAGE_GONE:
                    self._log.info("slack_message_replaced", job_id=view.job_id)
                    reply, stored = None, {}
            if reply is None:
                if quiet:
                    return DeliveryResult(ok=True), "skipped"
                action = "posted"
                reply = await self._call(
                    self._post_url, {"channel": self._channel, **self._new(view)}
                )
                ts, channel = reply.data.get("ts"), reply.data.get("channel")
                if reply.result.ok and isinstance(ts, str) and isinstance(channel, str):
                    stored = {"ts": ts, "channel": channel}
            if not reply.result.ok:
                if quiet:
                    self._log.info("slack_message_update_failed", reason=reply.result.reason)
                return reply.result, action
            if stored:
                await self._remember(key, {**stored, "seq": str(view.sequence)})
            if quiet or view.status != "failed" or not view.errors or not stored:
                return reply.result, action
            if stored.get("thread_event") == view.event_id:
                return reply.result, action  # a redelivery: the errors are already there
            thread = await self._call(
                self._post_url,
                {
                    "channel": stored["channel"],
                    "thread_ts": stored["ts"],
                    **render_error_thread(view),
                },
            )
            if not thread.result.ok:
                # Retried whole: the edit is harmless to repeat, the thread reply is not sent.
                return thread.result, action
            await self._remember(key, {"thread_event": view.event_id})
            return reply.result, action

    async def _remember(self, key: str, fields: dict[str, str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, MESSAGE_TTL)
            await pipe.execute()

    def _api(self, method: str) -> yarl.URL:
        return yarl.URL(self._api_base + method)

    def _render(self, view: JobView) -> dict[str, Any]:
        return render_job_message(
            view,
            link=self._link(view.job_id, view.store, view.job_type, view.source),
            max_errors=MAIN_ERRORS_BOT if self._bot else MAIN_ERRORS_WEBHOOK,
            errors_in_thread=self._bot,
        )

    def _new(self, view: JobView) -> dict[str, Any]:
        # A job link is what people click; Slack's preview card of it would only add noise.
        return {**self._render(view), "unfurl_links": False, "unfurl_media": False}

    def _link(self, job_id: str, store: str, job_type: str, source: str) -> str | None:
        if self._link_template is None:
            return None
        values = {"job_id": job_id, "store": store, "job_type": job_type, "source": source}
        url = self._link_template.format(
            **{k: urllib.parse.quote(v, safe="") for k, v in values.items()}
        )
        return url if len(url) <= BUTTON_URL_MAX else None

    # HTTP: paced, classified, never raising for the destination's faults.

    async def _call(self, url: yarl.URL, payload: dict[str, Any]) -> _Reply:
        """One request (the caller holds the lock), tried again once after a short 429."""
        reply = await self._attempt(url, payload)
        wait = reply.result.retry_after
        if reply.result.status == 429 and wait is not None and wait <= SHORT_RETRY_AFTER:
            self._log.info("slack_rate_limited", retry_after=wait)
            reply = await self._attempt(url, payload)
        return reply

    async def _attempt(self, url: yarl.URL, payload: dict[str, Any]) -> _Reply:
        if self._session is None:
            raise RuntimeError(f"slack sink {self.name!r} used before start()")
        wait = self._next_send - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        headers = {"content-type": "application/json; charset=utf-8"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        data = json.dumps(payload, ensure_ascii=False).encode()
        try:
            async with self._session.post(
                url, data=data, headers=headers, allow_redirects=False
            ) as response:
                reply = self._judge(
                    response.status, response.headers, await read_body(response, _MAX_BODY)
                )
        except AddressRefused as exc:
            reply = _Reply(DeliveryResult(ok=False, reason=exc.reason, retryable=False))
        except TimeoutError:  # aiohttp's timeouts all derive from it
            reply = _Reply(DeliveryResult(ok=False, reason=f"timed out after {self._timeout} s"))
        except (aiohttp.ClientError, OSError) as exc:
            reason = describe_connection_failure(exc, url)
            reply = _Reply(DeliveryResult(ok=False, reason=reason))
        # Spaced from the end of the last request: Slack counts arrivals, and a slow answer
        # must not let the next request arrive early.
        self._next_send = time.monotonic() + self._min_interval
        if reply.result.status == 429 and reply.result.retry_after:
            self._next_send = max(self._next_send, time.monotonic() + reply.result.retry_after)
        return reply

    def _judge(self, status: int, headers: Mapping[str, str], raw: bytes) -> _Reply:
        text = raw.decode(errors="replace")
        common: dict[str, Any] = {
            "status": status,
            "response_excerpt": redact_text(text[:EXCERPT_CHARS]),
        }
        data: dict[str, Any] = {}
        code: Any
        if self._bot:
            with contextlib.suppress(ValueError):
                data = as_mapping(json.loads(text))
            if 200 <= status < 300 and data.get("ok") is True:
                return _Reply(DeliveryResult(ok=True, **common), data)
            code = data.get("error")
        else:
            if 200 <= status < 300:
                return _Reply(DeliveryResult(ok=True, **common))
            code = text.strip()
        code = code if isinstance(code, str) and _CODE.fullmatch(code) else None
        if status == 429 or code in ("ratelimited", "rate_limited"):
            retry_after = parse_retry_after(headers.get("retry-after"))
            where = "channel" if self._bot else "webhook"
            reason = f"Slack is rate limiting this {where} (429 Too Many Requests)"
            return _Reply(
                DeliveryResult(ok=False, reason=reason, retry_after=retry_after, **common)
            )
        if status >= 500:
            reason = f"Slack answered {status_text(status)}" + (f" ({code})" if code else "")
            return _Reply(DeliveryResult(ok=False, reason=reason, **common), data)
        if code in SLACK_ERRORS:
            kind, why = SLACK_ERRORS[code]
            reason = f"Slack says {code}: {why}"
            if kind == _BUG:
                reason += f"{_slack_detail(data)}; this is a bug in jobs-bridge, please report it"
            gone, bug = kind == _GONE, kind == _BUG
            result = DeliveryResult(
                ok=False, reason=reason, retryable=not (gone or bug), disable=gone, **common
            )
            return _Reply(result, data)
        if status in (400, 403, 404, 410):
            # The webhook or API address itself is wrong or gone: retrying cannot fix it.
            reason = f"Slack answered {status_text(status)}" + (f" ({code})" if code else "")
            result = DeliveryResult(
                ok=False, reason=reason, retryable=False, disable=True, **common
            )
            return _Reply(result, data)
        if code is not None:
            return _Reply(DeliveryResult(ok=False, reason=f"Slack says {code}", **common), data)
        if 300 <= status < 400:
            reason = f"Slack answered {status_text(status)}; redirects are not followed"
        elif 200 <= status < 300:
            reason = f"Slack answered {status_text(status)} without a readable result"
        else:
            reason = f"Slack answered {status_text(status)}"
        return _Reply(DeliveryResult(ok=False, reason=reason, **common), data)

    # Digests: failures past the threshold wait in Redis and go out once per window.

    async def _fold(self, view: JobView) -> bool:
        """Count a failure; True when it went into the digest instead of its own message."""
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
        folded = await self._fold_script(
            keys=[self._recent_key, self._digest_key, self._opened_key, self._inflight_key],
            args=[
                repr(time.time()),
                repr(self._group_window),
                self._group_threshold,
                view.event_id or f"{view.job_id}/{view.status}",
                json.dumps(entry, ensure_ascii=False),
                MESSAGE_TTL,
            ],
        )
        if folded:
            self._wake.set()
        return bool(folded)

    async def _flush_loop(self) -> None:
        # The flag, not only cancel(): redis-py's pipeline can swallow a cancellation that
        # lands while it returns its connection to the pool, and the loop would go on.
        while not self._closing:
            self._wake.clear()  # before the check: a fold during it wakes the wait below
            try:
                delay = await self._seconds_to_flush()
                if delay <= 0 and await self._flush_digest():
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
            return self._group_window
        return float(opened) + self._group_window - time.time()

    def _lease_seconds(self) -> float:
        tries = len(self.digest_backoff) + 1
        per_try = 2 * (self._timeout + self._min_interval) + SHORT_RETRY_AFTER
        return tries * per_try + sum(min(b, DIGEST_MAX_WAIT) for b in self.digest_backoff) + 60

    async def _flush_digest(self) -> bool:
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
            await self._release_script(
                keys=[self._inflight_key, self._lease_key], args=[token, "1"]
            )
            return True
        done = False
        try:
            result = await self._send_digest(entries)
            done = True
        finally:
            # Stopped mid-send: keep the digest and free the lease, so a restart sends it now.
            await self._release_script(
                keys=[self._inflight_key, self._lease_key], args=[token, "1" if done else "0"]
            )
        jobs = [e.get("job_id") for e in entries]
        if result.ok:
            self._log.info("slack_digest_sent", events=len(entries), job_ids=jobs[:50])
            await self._redis.hincrby(self.stats_key, "digests_sent", 1)
        else:
            self._log.error(
                "slack_digest_failed",
                events=len(entries),
                job_ids=jobs[:50],
                reason=result.reason,
                status=result.status,
            )
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(self.stats_key, "digests_failed", 1)
                pipe.hincrby(self.stats_key, "digest_events_lost", len(entries))
                await pipe.execute()
        return True

    async def _send_digest(self, entries: list[dict[str, Any]]) -> DeliveryResult:
        message = render_digest(
            entries,
            window=self._group_window,
            threshold=self._group_threshold,
            now=time.time(),
            link_for=lambda e: self._link(
                str(e.get("job_id")),
                str(e.get("store")),
                str(e.get("job_type")),
                str(e.get("source")),
            ),
        )
        payload = {"channel": self._channel, **message} if self._bot else message
        # Retried here, not by the dispatcher: no event stands for the digest.
        pauses = iter(self.digest_backoff)
        while True:
            async with self._lock:
                result = (await self._call(self._post_url, payload)).result
            pause = next(pauses, None)
            if result.ok or not result.retryable or pause is None:
                return result
            pause = min(max(pause, result.retry_after or 0.0), DIGEST_MAX_WAIT)
            self._log.info("slack_digest_retrying", reason=result.reason, wait=pause)
            # The lock is free meanwhile: single messages keep flowing while the digest waits.
            await asyncio.sleep(pause)


@dataclass(frozen=True, slots=True)
class _Reply:
    result: DeliveryResult
    data: dict[str, Any] = field(default_factory=dict)  # the Web API's JSON answer


def _slack_detail(data: Mapping[str, Any]) -> str:
    # Slack explains refused blocks in response_metadata.messages; the first says where.
    messages = as_mapping(data.get("response_metadata")).get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], str):
        return f" ({redact_text(cut(messages[0], 200))})"
    return ""


def _check_link_template(template: str) -> None:
    sample = {"job_id": "job", "store": "store", "job_type": "type", "source": "pcm"}
    try:
        url = template.format(**sample)
    except (KeyError, IndexError, ValueError, AttributeError):
        raise ValueError(
            "link_template may use {job_id}, {store}, {job_type} and {source} only"
        ) from None
    try:
        check_url(url)
    except ValueError as exc:
        raise ValueError(f"link_template: {exc}") from None


def _entries(raw: Sequence[Any]) -> list[dict[str, Any]]:
    values = [v.decode() if isinstance(v, bytes) else v for v in raw[1::2]]
    entries = []
    for value in values:
        with contextlib.suppress(ValueError, TypeError):
            entry = json.loads(value)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _decoded(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in mapping.items()
    }
