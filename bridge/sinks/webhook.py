"""Webhook sink: signed POSTs of events, per the Standard Webhooks specification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import structlog
import yarl

from bridge.httpclient import (
    AddressRefused,
    check_url,
    describe_connection_failure,
    make_session,
    parse_retry_after,
    read_excerpt,
    status_text,
)
from bridge.logs import redact_text, register_secrets
from bridge.sinks import DeliveryResult, elapsed_ms

log = structlog.get_logger(__name__)

_SECRET_PREFIX = "whsec_"


def _secret_key(secret: str, index: int) -> bytes:
    # Same decoding as the standardwebhooks package, so any secret it accepts signs here too.
    encoded = secret.removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "==", validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"secrets[{index}] is not base64 after '{_SECRET_PREFIX}'") from exc
    if not key:
        raise ValueError(f"secrets[{index}] is empty")
    return key


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,<base64>` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


class WebhookSink:
    """POSTs each event to one URL, signed with every configured secret."""

    def __init__(
        self,
        name: str,
        url: str,
        secrets: list[str],
        *,
        timeout: float = 15.0,
        allow_private_networks: bool = False,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        check_url(url)
        if not secrets:
            raise ValueError("at least one secret is required")
        self.name = name
        self._url = yarl.URL(url)
        self._keys = [_secret_key(secret, i) for i, secret in enumerate(secrets)]
        register_secrets(secrets)
        self._timeout = timeout
        self._allow_private_networks = allow_private_networks
        self._session = session
        self._owns_session = session is None
        self._log = log.bind(subscription=name)

    async def start(self) -> None:
        if self._session is None:
            self._session = make_session(
                allow_private_networks=self._allow_private_networks, timeout=self._timeout
            )

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult:
        if self._session is None:
            raise RuntimeError(f"webhook sink {self.name!r} used before start()")
        msg_id = str(event["id"])
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._keys, msg_id, timestamp, body),
        }
        started = time.perf_counter()
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                excerpt = redact_text(await read_excerpt(response))
                result = self._judge(response, excerpt, started)
        except AddressRefused as exc:
            result = DeliveryResult(
                ok=False, reason=exc.reason, retryable=False, duration_ms=elapsed_ms(started)
            )
        except TimeoutError:  # aiohttp's timeouts all derive from it
            result = DeliveryResult(
                ok=False,
                reason=f"timed out after {self._timeout} s",
                duration_ms=elapsed_ms(started),
            )
        except (aiohttp.ClientError, OSError) as exc:
            result = DeliveryResult(
                ok=False,
                reason=describe_connection_failure(exc, self._url),
                duration_ms=elapsed_ms(started),
            )
        self._log.debug(
            "delivery_attempted",
            event_id=msg_id,
            status=result.status,
            ok=result.ok,
            reason=result.reason or None,
            duration_ms=result.duration_ms,
        )
        return result

    def _judge(
        self, response: aiohttp.ClientResponse, excerpt: str, started: float
    ) -> DeliveryResult:
        status = response.status
        common: dict[str, Any] = {
            "status": status,
            "response_excerpt": excerpt,
            "duration_ms": elapsed_ms(started),
        }
        if 200 <= status < 300:
            return DeliveryResult(ok=True, **common)
        if status == 410:
            reason = "receiver answered 410 Gone"
            return DeliveryResult(ok=False, reason=reason, retryable=False, disable=True, **common)
        if 300 <= status < 400:
            target = self._redirect_host(response.headers.get("location"))
            reason = f"redirects are not followed (got {status} to {target})"
        else:
            # Other 4xx are retried too: receivers get misconfigured and fixed again, and the
            # retry schedule with disable_after bounds the cost.
            reason = f"receiver answered {status_text(status)}"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return DeliveryResult(ok=False, reason=reason, retry_after=retry_after, **common)

    def _redirect_host(self, location: str | None) -> str:
        # The host only: a Location's path or query may carry a token.
        if not location:
            return "no location"
        try:
            return self._url.join(yarl.URL(location)).host or "an unreadable location"
        except ValueError:
            return "an unreadable location"
