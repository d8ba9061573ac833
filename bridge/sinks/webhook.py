"""Webhook sink: signed POSTs of events, per the Standard Webhooks specification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr

from bridge.config.subscription import SubscriptionBase
from bridge.config.types import DEFAULT_TIMEOUT, HttpUrl
from bridge.logs import register_secrets
from bridge.sinks.base import DeliveryResult, SinkContext
from bridge.sinks.http import HttpSink

if TYPE_CHECKING:
    import aiohttp

    from bridge.httpclient import Answer

_SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # key length Standard Webhooks asks for, in bytes


def _check_secret(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError("must start with 'whsec_' (Standard Webhooks format: whsec_ + base64)")
    try:
        key = base64.b64decode(secret.removeprefix(_SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(
            "must be 'whsec_' followed by valid base64 (Standard Webhooks format)"
        ) from None
    if not key:
        raise ValueError("has no key after 'whsec_'")
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise ValueError(
            f"must decode to {SECRET_BYTES[0]}-{SECRET_BYTES[1]} bytes (Standard Webhooks); "
            f"this one has {len(key)}"
        )
    return value


WebhookSecret = Annotated[SecretStr, AfterValidator(_check_secret)]


class WebhookSubscription(SubscriptionBase):
    """HTTP POST of each event, signed the Standard Webhooks way."""

    type: Literal["webhook"] = "webhook"
    url: HttpUrl
    secrets: Annotated[list[WebhookSecret], Field(min_length=1)]
    allow_private_networks: bool | None = None


def _secret_key(secret: str) -> bytes:
    # Same decoding as the standardwebhooks package, so any secret it accepts signs here too.
    return base64.b64decode(secret.removeprefix(_SECRET_PREFIX) + "==", validate=False)


def signer(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed once: `sign` copies it, which skips the key set-up per message."""
    return hmac.new(key, digestmod=hashlib.sha256)


def sign(keys: list[hmac.HMAC], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,<base64>` per key (from `signer`),
    space-separated."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    signatures = []
    for key in keys:
        mac = key.copy()
        mac.update(signed)
        signatures.append("v1," + base64.b64encode(mac.digest()).decode())
    return " ".join(signatures)


class WebhookSink(HttpSink):
    """POSTs each event to one URL, signed with every configured secret."""

    def __init__(
        self,
        name: str,
        url: str,
        secrets: list[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        allow_private_networks: bool = False,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(
            name, timeout=timeout, allow_private_networks=allow_private_networks, session=session
        )
        self._url = url
        self._keys = [signer(_secret_key(secret)) for secret in secrets]
        register_secrets(secrets)

    @classmethod
    def from_config(cls, config: WebhookSubscription, context: SinkContext) -> WebhookSink:
        return cls(
            config.name,
            config.url,
            [secret.get_secret_value() for secret in config.secrets],
            timeout=config.timeout,
            allow_private_networks=context.allow_private_networks,
        )

    async def send(
        self, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        msg_id = str(event["id"])
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._keys, msg_id, timestamp, body),
        }
        answer = await self.post(self._url, body, headers)
        if isinstance(answer, DeliveryResult):
            details["status"] = None
            return answer
        details["status"] = answer.status
        return self._judge(answer)

    def _judge(self, answer: Answer) -> DeliveryResult:
        status = answer.status
        common: dict[str, Any] = {"status": status, "response_excerpt": answer.excerpt}
        if 200 <= status < 300:
            return DeliveryResult(ok=True, **common)
        if status == 410:
            reason = "receiver answered 410 Gone"
            return DeliveryResult(ok=False, reason=reason, retryable=False, disable=True, **common)
        if 300 <= status < 400:
            target = self._redirect_host(answer.headers.get("location"))
            reason = f"redirects are not followed (got {status} to {target})"
        else:
            # Other 4xx are retried too: receivers get misconfigured and fixed again, and the
            # retry schedule with disable_after bounds the cost.
            reason = f"receiver answered {answer.status_text}"
        return DeliveryResult(ok=False, reason=reason, retry_after=answer.retry_after, **common)

    def _redirect_host(self, location: str | None) -> str:
        # The host only: a Location's path or query may carry a token.
        import yarl

        if not location:
            return "no location"
        try:
            return yarl.URL(self._url).join(yarl.URL(location)).host or "an unreadable location"
        except ValueError:
            return "an unreadable location"
