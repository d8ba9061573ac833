"""RabbitMQ sink: each event published with publisher confirms to a durable topic exchange."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, ProbableAuthenticationError

from bridge.logs import redact_text, register_secrets
from bridge.sinks import DeliveryResult, LinkState, elapsed_ms

log = structlog.get_logger(__name__)

# Structured mode: the body is the whole CloudEvent (AMQP protocol binding, section 3.2).
CONTENT_TYPE = "application/cloudevents+json"
# The envelope attributes repeated as `cloudEvents:` headers, so that consumers and
# header-exchange bindings can route and filter without parsing the body.
_HEADER_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time")
# Seconds between the robust connection's reconnect attempts: events wait while it is down.
RECONNECT_INTERVAL = 1.0
_REASON_MAX = 300


def routing_key(event: dict[str, Any]) -> str:
    """`<source>.<job_type>.<status>`, e.g. `pcm.product-import.failed`."""
    data = event["data"]
    parts = (data.get("source"), (data.get("job") or {}).get("type"), data.get("status"))
    # A dot inside a part would add a word, and bindings like `pcm.*.failed` would miss it.
    return ".".join(str(part or "").replace(".", "_") or "_" for part in parts)


class RabbitMQSink:
    """Publishes each event persistently; a delivery succeeds once the broker confirms it."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        exchange: str = "ep-jobs",
        timeout: float = 15.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError("url must start with amqp:// or amqps://")
        if not exchange:
            raise ValueError("exchange must not be empty (the default exchange does not route)")
        self.name = name
        self._url = url
        default_port = 5671 if parts.scheme == "amqps" else 5672
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or default_port}"
        if parts.password:
            register_secrets([parts.password, unquote(parts.password)])
        self._exchange_name = exchange
        self._timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connect_lock = asyncio.Lock()
        self._closing = False
        self._log = log.bind(subscription=name, broker=self._where, exchange=exchange)
        self._link = LinkState(self._log)

    async def start(self) -> None:
        self._closing = False
        # The broker may be down at start: _connect() has logged it, and deliver() connects
        # once it is back.
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await self._open()

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._channel = self._exchange = None

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult:
        event_id = str(event["id"])
        key = routing_key(event)
        started = time.perf_counter()
        reason = await self._publish(_message(event, body), key)
        result = DeliveryResult(ok=not reason, reason=reason, duration_ms=elapsed_ms(started))
        self._log.debug(
            "delivery_attempted",
            event_id=event_id,
            routing_key=key,
            ok=result.ok,
            reason=reason or None,
            duration_ms=result.duration_ms,
        )
        return result

    async def _publish(self, message: aio_pika.Message, key: str) -> str:
        """Empty once the broker confirmed the message, else why it did not."""
        try:
            connection, channel, exchange = await self._open()
        except CONNECTION_EXCEPTIONS as exc:
            return self._failure(exc)
        if not connection.connected.is_set():
            # The robust connection is reconnecting; publishing would wait for it.
            return f"not connected to RabbitMQ at {self._where} (reconnecting)"
        try:
            async with asyncio.timeout(self._timeout):
                await channel.ready()  # channel and exchange restored after a reconnect
                # mandatory=False: an event nobody has bound a queue for is not an error.
                await exchange.publish(message, key, mandatory=False, timeout=self._timeout)
        except DeliveryError as exc:
            # Basic.Nack or Basic.Reject: the broker could not take responsibility for it.
            frame = type(exc.frame).__name__
            return f"RabbitMQ at {self._where} did not accept the message ({frame})"
        except TimeoutError:
            return f"no publisher confirm from RabbitMQ at {self._where} within {self._timeout} s"
        except CONNECTION_EXCEPTIONS as exc:
            return self._failure(exc)
        return ""

    async def _open(
        self,
    ) -> tuple[AbstractRobustConnection, AbstractRobustChannel, AbstractExchange]:
        """Connection, channel and exchange, made on first use; aio-pika restores them after."""
        async with self._connect_lock:
            if self._connection is None or self._channel is None or self._exchange is None:
                self._connection, self._channel, self._exchange = await self._connect()
            return self._connection, self._channel, self._exchange

    async def _connect(
        self,
    ) -> tuple[AbstractRobustConnection, AbstractRobustChannel, AbstractExchange]:
        try:
            connection = await aio_pika.connect_robust(
                self._url,
                timeout=self._timeout,
                reconnect_interval=RECONNECT_INTERVAL,
                client_properties={"connection_name": f"jobs-bridge {self.name}"},
            )
        except CONNECTION_EXCEPTIONS as exc:
            self._link.set(False, self._failure(exc))
            raise
        self._link.set(True)
        try:
            channel = await connection.channel(publisher_confirms=True)
            # Declared (and re-declared on every reconnect by aio-pika) so that publishing
            # never depends on someone having created the exchange first.
            exchange = await channel.declare_exchange(
                self._exchange_name,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                timeout=self._timeout,
            )
        except BaseException as exc:
            await connection.close()
            if isinstance(exc, CONNECTION_EXCEPTIONS):
                # Connected, but the exchange cannot be used (declared with another type, no
                # permission): start over on the next delivery, after the operator fixed it.
                self._log.warning("exchange_declare_failed", reason=self._failure(exc))
            raise
        connection.close_callbacks.add(self._on_connection_closed)
        connection.reconnect_callbacks.add(self._on_reconnected)
        return connection, channel, exchange

    def _on_connection_closed(self, _connection: Any, exc: BaseException | None = None) -> None:
        if not self._closing:
            reason = self._failure(exc) if exc is not None else "connection closed"
            self._link.set(False, reason)

    def _on_reconnected(self, _connection: Any) -> None:
        self._link.set(True)

    def _failure(self, exc: BaseException) -> str:
        if isinstance(exc, ProbableAuthenticationError):
            return f"RabbitMQ at {self._where} refused the login (check user and password)"
        detail = str(exc) or type(exc).__name__
        text = f"RabbitMQ at {self._where} failed ({type(exc).__name__}: {detail})"
        return redact_text(text)[:_REASON_MAX]


def _message(event: dict[str, Any], body: bytes) -> aio_pika.Message:
    headers: dict[str, Any] = {
        f"cloudEvents:{name}": str(event[name])
        for name in _HEADER_ATTRIBUTES
        if event.get(name) is not None
    }
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=str(event["id"]),
        timestamp=_timestamp(event.get("time")),
        type=str(event.get("type") or ""),
        app_id="jobs-bridge",
        headers=headers,
    )


def _timestamp(value: Any) -> datetime:
    # When the bridge observed the transition, which is what the event describes; AMQP
    # keeps whole seconds only.
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC)
