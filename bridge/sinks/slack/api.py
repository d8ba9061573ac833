"""Slack's HTTP side: one request at a time, paced, and every answer classified by Slack's codes.

Bot mode calls the Web API (JSON with `ok` and `error`); webhook mode posts to an incoming
webhook (plain-text error codes). Either way a request never raises for Slack's faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from bridge.logs import redact_text
from bridge.sinks.base import DeliveryResult
from bridge.sinks.slack.render import as_mapping, cut

if TYPE_CHECKING:
    from bridge.httpclient import Answer

# A 429 asking for at most this long is waited out in place, once: the usual cause is Slack's
# 1 msg/s per channel, and the dispatcher's first retry (5 s, then minutes) would add more
# delay and let later updates of the same job overtake this one. Longer waits go back to the
# dispatcher, which must not have a delivery slot held for minutes.
SHORT_RETRY_AFTER = 5.0
MIN_INTERVAL = 1.0  # seconds between requests: Slack allows about one message per second
MAX_BODY = 1 << 20  # chat.postMessage echoes the message back: tens of KB at most
_CODE = re.compile(r"[a-z0-9_]{1,64}")

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

Post = Callable[..., Awaitable["Answer | DeliveryResult"]]


@dataclass(frozen=True, slots=True)
class Reply:
    result: DeliveryResult
    data: dict[str, Any] = field(default_factory=dict)  # the Web API's JSON answer


class SlackApi:
    """Requests to one Slack destination (a channel through the Web API, or a webhook).

    Callers hold `lock` around a request: one at a time, in arrival order (asyncio.Lock is
    FIFO), since Slack allows about one message per second per channel or webhook, and a
    job's events must not race to create two messages for it.
    """

    def __init__(
        self, post: Post, *, token: str | None, min_interval: float, log: Any = None
    ) -> None:
        self._post = post
        self._token = token
        self.min_interval = min_interval
        self.lock = asyncio.Lock()
        self._next_send = 0.0  # time.monotonic() before which the next request waits
        self._log = log or structlog.get_logger(__name__)

    @property
    def bot(self) -> bool:
        return self._token is not None

    async def call(self, url: str, payload: dict[str, Any]) -> Reply:
        """One request (the caller holds the lock), tried again once after a short 429."""
        reply = await self._attempt(url, payload)
        wait = reply.result.retry_after
        if reply.result.status == 429 and wait is not None and wait <= SHORT_RETRY_AFTER:
            self._log.info("slack_rate_limited", retry_after=wait)
            reply = await self._attempt(url, payload)
        return reply

    async def _attempt(self, url: str, payload: dict[str, Any]) -> Reply:
        wait = self._next_send - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        headers = {"content-type": "application/json; charset=utf-8"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        data = json.dumps(payload, ensure_ascii=False).encode()
        answer = await self._post(url, data, headers, max_bytes=MAX_BODY)
        reply = Reply(answer) if isinstance(answer, DeliveryResult) else self._judge(answer)
        # Spaced from the end of the last request: Slack counts arrivals, and a slow answer
        # must not let the next request arrive early.
        self._next_send = time.monotonic() + self.min_interval
        if reply.result.status == 429 and reply.result.retry_after:
            self._next_send = max(self._next_send, time.monotonic() + reply.result.retry_after)
        return reply

    def _judge(self, answer: Answer) -> Reply:
        status = answer.status
        common: dict[str, Any] = {"status": status, "response_excerpt": answer.excerpt}
        data: dict[str, Any] = {}
        code: Any
        if self.bot:
            with contextlib.suppress(ValueError):
                data = as_mapping(json.loads(answer.text))
            if 200 <= status < 300 and data.get("ok") is True:
                return Reply(DeliveryResult(ok=True, **common), data)
            code = data.get("error")
        else:
            if 200 <= status < 300:
                return Reply(DeliveryResult(ok=True, **common))
            code = answer.text.strip()
        code = code if isinstance(code, str) and _CODE.fullmatch(code) else None
        if status == 429 or code in ("ratelimited", "rate_limited"):
            where = "channel" if self.bot else "webhook"
            reason = f"Slack is rate limiting this {where} (429 Too Many Requests)"
            return Reply(
                DeliveryResult(ok=False, reason=reason, retry_after=answer.retry_after, **common)
            )
        return Reply(_failure(answer, code, data, common), data)


def _failure(
    answer: Answer, code: str | None, data: Mapping[str, Any], common: dict[str, Any]
) -> DeliveryResult:
    """A refused request: gone (disable), a bug of ours (dead-letter), or worth a retry."""
    status = answer.status
    said = f"Slack answered {answer.status_text}" + (f" ({code})" if code else "")
    if status >= 500:
        return DeliveryResult(ok=False, reason=said, **common)
    if code in SLACK_ERRORS:
        kind, why = SLACK_ERRORS[code]
        reason = f"Slack says {code}: {why}"
        if kind == _BUG:
            reason += f"{_slack_detail(data)}; this is a bug in jobs-bridge, please report it"
        gone, bug = kind == _GONE, kind == _BUG
        return DeliveryResult(
            ok=False, reason=reason, retryable=not (gone or bug), disable=gone, **common
        )
    if status in (400, 403, 404, 410):
        # The webhook or API address itself is wrong or gone: retrying cannot fix it.
        return DeliveryResult(ok=False, reason=said, retryable=False, disable=True, **common)
    if code is not None:
        return DeliveryResult(ok=False, reason=f"Slack says {code}", **common)
    if 300 <= status < 400:
        reason = f"Slack answered {answer.status_text}; redirects are not followed"
    elif 200 <= status < 300:
        reason = f"Slack answered {answer.status_text} without a readable result"
    else:
        reason = f"Slack answered {answer.status_text}"
    return DeliveryResult(ok=False, reason=reason, **common)


def _slack_detail(data: Mapping[str, Any]) -> str:
    # Slack explains refused blocks in response_metadata.messages; the first says where.
    messages = as_mapping(data.get("response_metadata")).get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], str):
        return f" ({redact_text(cut(messages[0], 200))})"
    return ""
