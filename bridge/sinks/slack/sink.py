"""The Slack subscription and its sink: routes each event to the job's message, a plain post,
or the digest, and writes its own log lines."""

from __future__ import annotations

import string
import urllib.parse
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from bridge.config.subscription import SubscriptionBase
from bridge.config.types import (
    DEFAULT_TIMEOUT,
    Duration,
    HttpUrl,
    Invalid,
    Loc,
    NonEmptyStr,
    Secret,
    check_url,
    secret_url,
)
from bridge.jobs import JobStatus
from bridge.logs import register_secrets
from bridge.sinks.base import DeliveryResult, SinkContext
from bridge.sinks.http import HttpSink
from bridge.sinks.slack.api import MIN_INTERVAL, SlackApi
from bridge.sinks.slack.digest import ALREADY_SENT, NOT_FOLDED, Digest
from bridge.sinks.slack.messages import JobMessages
from bridge.sinks.slack.render import (
    BUTTON_URL_MAX,
    MAIN_ERRORS_BOT,
    MAIN_ERRORS_WEBHOOK,
    NO_UNFURL,
    JobView,
    render_job_message,
)

if TYPE_CHECKING:
    import aiohttp
    import redis.asyncio as aioredis

DEFAULT_API_BASE = "https://slack.com/api/"
FAILURE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.STALLED})
LINK_TEMPLATE_FIELDS = ("job_id", "store", "job_type", "source")
DIGEST_WAITERS = 200  # folded failures that may wait for a digest at once


def _check_link_template(value: str) -> str:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError:
        raise ValueError("has an unbalanced '{' or '}' (write '{{' or '}}' for a brace)") from None
    allowed = ", ".join(f"{{{name}}}" for name in LINK_TEMPLATE_FIELDS)
    unknown = sorted(fields - set(LINK_TEMPLATE_FIELDS))
    if unknown:
        listed = ", ".join(f"{{{name}}}" for name in unknown)
        raise ValueError(f"unknown placeholder {listed} (allowed: {allowed})")
    try:
        link = value.format(**dict.fromkeys(LINK_TEMPLATE_FIELDS, "x"))
    except (ValueError, KeyError, IndexError, AttributeError):
        raise ValueError(f"is not a valid template (placeholders: {allowed})") from None
    check_url(link, ("http", "https"))
    return value


class SlackSubscription(SubscriptionBase):
    """A Slack message per event: incoming-webhook mode (webhook_url) or bot mode (token)."""

    type: Literal["slack"] = "slack"
    webhook_url: Annotated[SecretStr, secret_url("http", "https")] | None = None
    token: Secret | None = None
    channel: NonEmptyStr | None = None
    api_base_url: HttpUrl = DEFAULT_API_BASE
    link_template: Annotated[str, AfterValidator(_check_link_template)] | None = None
    group_window: Duration = 30.0
    group_threshold: int = Field(5, ge=1)
    allow_private_networks: bool | None = None

    @field_validator("api_base_url")
    @classmethod
    def _end_with_slash(cls, value: str) -> str:
        # Method names are appended (f"{api_base_url}chat.postMessage").
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _one_mode(self) -> SlackSubscription:
        webhook, bot = self.webhook_url is not None, self.token is not None
        problem: tuple[Loc, str] | None = None
        if webhook and bot:
            problem = ((), "set webhook_url (incoming webhook) or token (bot), not both")
        elif not webhook and not bot:
            problem = ((), "set webhook_url (incoming webhook) or token + channel (bot)")
        elif bot and self.channel is None:
            problem = (("channel",), "is required with token (bot mode)")
        elif webhook and self.channel is not None:
            problem = (("channel",), "is for bot mode (token); an incoming webhook has its own")
        if problem:
            raise Invalid([problem])
        return self


class SlackSink(HttpSink):
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
        api_base_url: str = DEFAULT_API_BASE,
        link_template: str | None = None,
        group_window: float = 30.0,
        group_threshold: int = 5,
        timeout: float = DEFAULT_TIMEOUT,
        allow_private_networks: bool = False,
        min_interval: float = MIN_INTERVAL,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        webhook_url, token = webhook_url or None, token or None
        super().__init__(
            name,
            timeout=timeout,
            allow_private_networks=allow_private_networks,
            session=session,
            mode="bot" if token else "webhook",
        )
        _register_secrets(webhook_url, token)
        self._link_template = link_template
        self._api = SlackApi(self.post, token=token, min_interval=min_interval, log=self.log)
        api_base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        # Where new messages go: the webhook itself, or chat.postMessage.
        self._post_url = webhook_url or api_base + "chat.postMessage"
        self.messages = JobMessages(
            redis,
            name,
            self._api,
            api_base=api_base,
            channel=channel,
            render=self._render,
            log=self.log,
        )
        self.digest = Digest(
            redis,
            name,
            self._api,
            post_url=self._post_url,
            channel=channel if token else None,
            window=group_window,
            threshold=group_threshold,
            timeout=timeout,
            link_for=lambda e: self._link(*(str(e.get(f)) for f in LINK_TEMPLATE_FIELDS)),
            log=self.log,
        )
        self.stats_key = self.digest.stats_key

    @classmethod
    def from_config(cls, config: SlackSubscription, context: SinkContext) -> SlackSink:
        if context.redis is None:
            raise ValueError("a Slack sink keeps its message state in the bridge's Redis")
        return cls(
            config.name,
            context.redis,
            webhook_url=config.webhook_url.get_secret_value() if config.webhook_url else None,
            token=config.token.get_secret_value() if config.token else None,
            channel=config.channel,
            api_base_url=config.api_base_url,
            link_template=config.link_template,
            group_window=config.group_window,
            group_threshold=config.group_threshold,
            timeout=config.timeout,
            allow_private_networks=context.allow_private_networks,
        )

    def job_key(self, store: str, source: str, job_id: str) -> str:
        """Where the ts and channel of a job's message are kept (bot mode)."""
        return self.messages.key(store, source, job_id)

    def concurrency(self, configured: int) -> int:
        # Folded failures wait for their digest: room for a storm's worth of them, beside
        # the messages that go out meanwhile (Slack's pacing limits those anyway).
        return (
            max(configured, self.digest.threshold + DIGEST_WAITERS)
            if self.digest.enabled
            else configured
        )

    async def start(self) -> None:
        await super().start()
        self.digest.start()

    async def close(self) -> None:
        await self.digest.stop()
        await super().close()

    async def send(
        self, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        from redis.exceptions import RedisError

        view = JobView.of(event)
        try:
            result, action = await self._route(view)
        except (RedisError, OSError) as exc:
            reason = f"Redis failed while preparing the message ({type(exc).__name__})"
            result, action = DeliveryResult(ok=False, reason=reason), "failed"
        details.update(view=view, action=action)
        return result

    async def _route(self, view: JobView) -> tuple[DeliveryResult, str]:
        """Into the digest, to the job's own message (bot), or a message of its own."""
        folded = NOT_FOLDED
        if self.digest.enabled and view.status in FAILURE_STATUSES:
            folded = await self.digest.fold(view)
        if folded != NOT_FOLDED:
            if self._api.bot:
                await self.messages.refresh_quietly(view)
            if folded == ALREADY_SENT:
                return DeliveryResult(ok=True, response_excerpt="sent in a digest before"), "folded"
            # Delivered when the digest that carries it is: it waits for that send.
            return await self.digest.outcome(view), "folded"
        if self._api.bot:
            return await self.messages.to_channel(view, quiet=False)
        async with self._api.lock:
            reply = await self._api.call(self._post_url, {**self._render(view), **NO_UNFURL})
        return reply.result, "posted"

    def log_attempt(
        self, event: dict[str, Any], result: DeliveryResult, details: dict[str, Any]
    ) -> None:
        view: JobView = details["view"]
        action: str = details["action"]
        if result.ok:
            sent = action in ("posted", "updated")
            self.log.info(
                "slack_message_sent" if sent else f"slack_event_{action}",
                event_id=view.event_id,
                job_id=view.job_id,
                status=view.status,
                action=action,
            )
            return
        self.log.debug(
            "slack_delivery_failed",
            event_id=view.event_id,
            job_id=view.job_id,
            status=result.status,
            reason=result.reason,
            retryable=result.retryable,
            disable=result.disable,
        )

    def _render(self, view: JobView) -> dict[str, Any]:
        bot = self._api.bot
        return render_job_message(
            view,
            link=self._link(view.job_id, view.store, view.job_type, view.source),
            max_errors=MAIN_ERRORS_BOT if bot else MAIN_ERRORS_WEBHOOK,
            errors_in_thread=bot,
        )

    def _link(self, job_id: str, store: str, job_type: str, source: str) -> str | None:
        if self._link_template is None:
            return None
        values = {"job_id": job_id, "store": store, "job_type": job_type, "source": source}
        url = self._link_template.format(
            **{k: urllib.parse.quote(v, safe="") for k, v in values.items()}
        )
        return url if len(url) <= BUTTON_URL_MAX else None


def _register_secrets(webhook_url: str | None, token: str | None) -> None:
    register_secrets([token])
    if webhook_url:
        parts = urllib.parse.urlsplit(webhook_url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        # The path alone is the credential too: mask it wherever it might be quoted.
        register_secrets([webhook_url, path if len(urllib.parse.unquote(parts.path)) > 8 else None])
