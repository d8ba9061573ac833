"""Webhook sink: signed POSTs of events, per the Standard Webhooks specification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import aiohttp
import structlog
import yarl

from bridge.httpclient import AddressRefused, check_url, make_session
from bridge.logs import redact_text, register_secrets
from bridge.sinks import DeliveryResult

log = structlog.get_logger(__name__)

_SECRET_PREFIX = "whsec_"
EXCERPT_CHARS = 1024
# A UTF-8 character is at most 4 bytes: never read more than this of a response body.
_EXCERPT_MAX_BYTES = 4 * EXCERPT_CHARS


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _status_text(status: int) -> str:
    # The standard phrase, not the receiver's: its reason line is free text we did not vet.
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _connection_failure(exc: BaseException, url: yarl.URL) -> str:
    """One sentence naming the error class and the host, never the path or query."""
    where = f"{url.host}:{url.port}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"could not resolve {url.host} ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        detail = exc.strerror or type(exc.os_error).__name__
        return f"could not connect to {where} ({type(exc).__name__}: {detail})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"connection to {where} failed ({type(exc).__name__}: {exc.strerror})"
    return f"connection to {where} failed ({type(exc).__name__})"


async def _read_excerpt(response: aiohttp.ClientResponse) -> str:
    """The first EXCERPT_CHARS characters of the body, reading only as much as that takes."""
    buffer = bytearray()
    try:
        while len(buffer) < _EXCERPT_MAX_BYTES:
            chunk = await response.content.read(_EXCERPT_MAX_BYTES - len(buffer))
            if not chunk:
                break
            buffer += chunk
            if (
                len(buffer) >= EXCERPT_CHARS
                and len(buffer.decode(errors="ignore")) >= EXCERPT_CHARS
            ):
                break
    except (TimeoutError, aiohttp.ClientError):
        # The status line already said what the receiver thinks; a body that stalls or breaks
        # off only shortens the excerpt.
        pass
    return bytes(buffer).decode(errors="replace")[:EXCERPT_CHARS]


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
                excerpt = redact_text(await _read_excerpt(response))
                result = self._judge(response, excerpt, started)
        except AddressRefused as exc:
            result = DeliveryResult(
                ok=False, reason=exc.reason, retryable=False, duration_ms=_since(started)
            )
        except TimeoutError:  # aiohttp's timeouts all derive from it
            result = DeliveryResult(
                ok=False,
                reason=f"timed out after {self._timeout} s",
                duration_ms=_since(started),
            )
        except (aiohttp.ClientError, OSError) as exc:
            result = DeliveryResult(
                ok=False,
                reason=redact_text(_connection_failure(exc, self._url)),
                duration_ms=_since(started),
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
            "duration_ms": _since(started),
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
            reason = f"receiver answered {_status_text(status)}"
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


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
