"""Redis stream sink: XADD of each event, as plain fields any Redis client can read."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bridge.config.subscription import SubscriptionBase
from bridge.config.types import DEFAULT_TIMEOUT, NonEmptyStr, RedisUrl
from bridge.sinks.base import BrokerSink, DeliveryResult, SinkContext, capped

if TYPE_CHECKING:
    import redis.asyncio as aioredis

DEFAULT_STREAM = "ep-jobs"
DEFAULT_MAXLEN = 100_000


class RedisStreamSubscription(SubscriptionBase):
    """XADD of each event to a Redis stream."""

    type: Literal["redis_stream"] = "redis_stream"
    url: RedisUrl
    stream: NonEmptyStr = DEFAULT_STREAM
    maxlen: int | None = Field(DEFAULT_MAXLEN, ge=1)


class RedisStreamSink(BrokerSink["aioredis.Redis"]):
    """Appends each event to one stream, trimmed to about `maxlen` entries.

    Delivery is at-least-once: an XADD that timed out may still have run, and the retry
    appends the event again. Each entry carries the event `id`, which consumers dedupe on.
    """

    broker = "Redis"
    default_ports = {"redis": 6379, "rediss": 6379}

    def __init__(
        self,
        name: str,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int | None = DEFAULT_MAXLEN,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name, url, timeout=timeout, stream=stream)
        self._stream = stream
        self._maxlen = maxlen

    @classmethod
    def from_config(cls, config: RedisStreamSubscription, context: SinkContext) -> RedisStreamSink:
        return cls(
            config.name,
            config.url,
            stream=config.stream,
            maxlen=config.maxlen,
            timeout=config.timeout,
        )

    def errors(self) -> tuple[type[BaseException], ...]:
        from redis.exceptions import RedisError

        return (RedisError, OSError)

    async def connect(self) -> aioredis.Redis:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # One immediate retry replaces a pooled connection that died while Redis
            # restarted; the library default (backoff, 3 retries) would hold a delivery
            # for seconds against a Redis that is really down.
            retry=Retry(NoBackoff(), 1),
        )

    async def disconnect(self, client: aioredis.Redis) -> None:
        await client.aclose()

    async def start(self) -> None:
        await super().start()
        # The target may be down at start: say so, and let deliver() use it when it is back.
        try:
            async with asyncio.timeout(self.timeout):
                await (await self.client()).ping()
        except self.errors() as exc:
            self.link.set(False, self.failure(exc))
        else:
            self.link.set(True)

    async def send(
        self, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        from redis.exceptions import ResponseError

        client = await self.client()
        try:
            # The client's own timeouts bound each socket operation; this bounds the whole
            # attempt, retry included.
            async with asyncio.timeout(self.timeout):
                entry_id = await client.xadd(
                    self._stream,
                    _fields(event, body),
                    maxlen=self._maxlen,
                    approximate=True,  # MAXLEN ~ trims whole macro nodes: cheap
                )
        except TimeoutError:
            reason = f"Redis at {self.where} did not answer within {self.timeout} s"
            self.link.set(False, reason)
            return DeliveryResult(ok=False, reason=reason)
        except ResponseError as exc:
            # Redis answered (WRONGTYPE, OOM, NOPERM, ...): the connection itself is fine.
            reason = capped(f"Redis at {self.where} refused XADD: {exc}")
            return DeliveryResult(ok=False, reason=reason)
        except self.errors() as exc:
            reason = self.failure(exc)
            self.link.set(False, reason)
            return DeliveryResult(ok=False, reason=reason)
        self.link.set(True)
        details["entry_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return DeliveryResult(ok=True)


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
