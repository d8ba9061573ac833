"""Redis stream sink: XADD of each event, as plain fields any Redis client can read."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from bridge.logs import redact_text, register_secrets
from bridge.sinks import DeliveryResult, LinkState, elapsed_ms

log = structlog.get_logger(__name__)

_REASON_MAX = 300


class RedisStreamSink:
    """Appends each event to one stream, trimmed to about `maxlen` entries.

    Delivery is at-least-once: an XADD that timed out may still have run, and the retry
    appends the event again. Each entry carries the event `id`, which consumers dedupe on.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        stream: str = "ep-jobs",
        maxlen: int | None = 100_000,
        timeout: float = 15.0,
    ) -> None:
        if not stream:
            raise ValueError("stream must not be empty")
        if maxlen is not None and maxlen < 1:
            raise ValueError("maxlen must be at least 1, or None for no trimming")
        self.name = name
        self._url = url
        self._where = _where(url)
        register_secrets(_credentials(url))
        self._stream = stream
        self._maxlen = maxlen
        self._timeout = timeout
        self._client: aioredis.Redis | None = None
        self._log = log.bind(subscription=name, broker=self._where, stream=stream)
        self._link = LinkState(self._log)

    async def start(self) -> None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                # One immediate retry replaces a pooled connection that died while Redis
                # restarted; the library default (backoff, 3 retries) would hold a delivery
                # for seconds against a Redis that is really down.
                retry=Retry(NoBackoff(), 1),
            )
        # The target may be down at start: say so, and let deliver() connect when it is back.
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.ping()
        except (RedisError, OSError) as exc:
            self._link.set(False, _failure(exc, self._where))
        else:
            self._link.set(True)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult:
        if self._client is None:
            raise RuntimeError(f"redis_stream sink {self.name!r} used before start()")
        event_id = str(event["id"])
        entry_id: bytes | None = None
        started = time.perf_counter()
        try:
            # The client's own timeouts bound each socket operation; this bounds the whole
            # attempt, retry included.
            async with asyncio.timeout(self._timeout):
                entry_id = await self._client.xadd(
                    self._stream,
                    _fields(event, body),
                    maxlen=self._maxlen,
                    approximate=True,  # MAXLEN ~ trims whole macro nodes: cheap
                )
        except TimeoutError:
            reason = f"Redis at {self._where} did not answer within {self._timeout} s"
            result = DeliveryResult(ok=False, reason=reason, duration_ms=elapsed_ms(started))
            self._link.set(False, reason)
        except ResponseError as exc:
            # Redis answered (WRONGTYPE, OOM, NOPERM, ...): the connection itself is fine.
            reason = redact_text(f"Redis at {self._where} refused XADD: {exc}")[:_REASON_MAX]
            result = DeliveryResult(ok=False, reason=reason, duration_ms=elapsed_ms(started))
        except (RedisError, OSError) as exc:
            reason = _failure(exc, self._where)
            result = DeliveryResult(ok=False, reason=reason, duration_ms=elapsed_ms(started))
            self._link.set(False, reason)
        else:
            result = DeliveryResult(ok=True, duration_ms=elapsed_ms(started))
            self._link.set(True)
        self._log.debug(
            "delivery_attempted",
            event_id=event_id,
            entry_id=entry_id.decode() if entry_id else None,
            ok=result.ok,
            reason=result.reason or None,
            duration_ms=result.duration_ms,
        )
        return result


def _fields(event: dict[str, Any], body: bytes) -> dict[str, str | bytes]:
    """The stream entry: the envelope attributes as plain fields, plus the whole event."""
    return {
        "id": str(event["id"]),
        "type": str(event.get("type") or ""),
        "subject": str(event.get("subject") or ""),
        "time": str(event.get("time") or ""),
        "source": str(event.get("source") or ""),
        "data": json.dumps(event.get("data"), separators=(",", ":"), ensure_ascii=False),
        "event": body,  # the exact bytes every other sink sends
    }


def _where(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _credentials(url: str) -> list[str]:
    password = urlsplit(url).password
    return [password, unquote(password)] if password else []


def _failure(exc: BaseException, where: str) -> str:
    """One sentence naming the error; redis-py's messages name host and port, not passwords."""
    detail = str(exc) or type(exc).__name__
    return redact_text(f"Redis at {where} failed ({type(exc).__name__}: {detail})")[:_REASON_MAX]
