"""Bot mode: one Slack message per job, edited in place as the job moves; errors in a thread.

Where each job's message is (its ts and channel) is kept in Redis, so that a restart or
another replica edits the same message instead of posting a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bridge.jobs import JobStatus
from bridge.keys import slack_key
from bridge.sinks.base import DeliveryResult
from bridge.sinks.slack.api import Reply, SlackApi
from bridge.sinks.slack.render import NO_UNFURL, JobView, as_int, render_error_thread

if TYPE_CHECKING:
    import redis.asyncio as aioredis

MESSAGE_TTL = 14 * 24 * 3600  # how long a job's message stays updatable; jobs end long before
# chat.update cannot change these messages any more: post a new one instead.
_MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})


class JobMessages:
    """The message of each job in one channel, posted once and then updated."""

    def __init__(
        self,
        redis: aioredis.Redis,
        subscription: str,
        api: SlackApi,
        *,
        api_base: str,
        channel: str | None,
        render: Callable[[JobView], dict[str, Any]],
        log: Any,
    ) -> None:
        self._redis = redis
        self._subscription = subscription
        self._api = api
        self._post_url = api_base + "chat.postMessage"
        self._update_url = api_base + "chat.update"
        self._channel = channel
        self._render = render
        self._log = log

    def key(self, store: str, source: str, job_id: str) -> str:
        """Where the ts and channel of a job's message are kept."""
        return slack_key(self._subscription, store, source, job_id)

    async def refresh_quietly(self, view: JobView) -> None:
        # An edit adds no message to the channel, and it keeps the job's own message from
        # saying "started" forever. Best effort: the digest carries the news either way.
        from redis.exceptions import RedisError

        try:
            await self.to_channel(view, quiet=True)
        except (RedisError, OSError) as exc:
            self._log.info("slack_message_update_failed", reason=type(exc).__name__)

    async def to_channel(self, view: JobView, *, quiet: bool) -> tuple[DeliveryResult, str]:
        """Post or update the job's message, then thread its errors. `quiet`: edit only.

        Returns the result and what was done: posted, updated or skipped.
        """
        key = self.key(view.store, view.source, view.job_id)
        async with self._api.lock:
            stored = _decoded(await self._redis.hgetall(key))
            if stored and as_int(stored.get("seq")) > view.sequence:
                # A retried older event: the message already shows a later state of the job.
                later = DeliveryResult(ok=True, response_excerpt="message shows a later state")
                return later, "skipped"
            reply, stored, action = await self._show(view, stored, quiet=quiet)
            if reply is None:
                return DeliveryResult(ok=True), action
            if not reply.result.ok:
                if quiet:
                    self._log.info("slack_message_update_failed", reason=reply.result.reason)
                return reply.result, action
            if stored:
                await self._remember(key, {**stored, "seq": str(view.sequence)})
            if quiet or view.status != JobStatus.FAILED or not view.errors or not stored:
                return reply.result, action
            return await self._thread_errors(key, view, stored, reply), action

    async def _show(
        self, view: JobView, stored: dict[str, str], *, quiet: bool
    ) -> tuple[Reply | None, dict[str, str], str]:
        """Edit the job's message, else post it (not when `quiet`): the reply, where the
        message is now, and which of the two it was (or None and "skipped")."""
        if stored.get("ts") and stored.get("channel"):
            edit = {"channel": stored["channel"], "ts": stored["ts"], **self._render(view)}
            reply = await self._api.call(self._update_url, edit)
            if reply.data.get("error") not in _MESSAGE_GONE:
                return reply, stored, "updated"
            self._log.info("slack_message_replaced", job_id=view.job_id)
            stored = {}
        if quiet:
            return None, stored, "skipped"
        new = {"channel": self._channel, **self._render(view), **NO_UNFURL}
        reply = await self._api.call(self._post_url, new)
        ts, channel = reply.data.get("ts"), reply.data.get("channel")
        if reply.result.ok and isinstance(ts, str) and isinstance(channel, str):
            stored = {"ts": ts, "channel": channel}
        return reply, stored, "posted"

    async def _thread_errors(
        self, key: str, view: JobView, stored: dict[str, str], reply: Reply
    ) -> DeliveryResult:
        if stored.get("thread_event") == view.event_id:
            return reply.result  # a redelivery: the errors are already there
        thread = await self._api.call(
            self._post_url,
            {"channel": stored["channel"], "thread_ts": stored["ts"], **render_error_thread(view)},
        )
        if not thread.result.ok:
            # Retried whole: the edit is harmless to repeat, the thread reply is not sent.
            return thread.result
        await self._remember(key, {"thread_event": view.event_id})
        return reply.result

    async def _remember(self, key: str, fields: dict[str, str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, MESSAGE_TTL)
            await pipe.execute()


def _decoded(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in mapping.items()
    }
