"""RabbitMQ sink: each event published with publisher confirms to a durable topic exchange,
`mandatory`: a message that no bound queue takes is returned, and that delivery failed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from bridge.config.subscription import SubscriptionBase
from bridge.config.types import DEFAULT_TIMEOUT, NonEmptyStr, url
from bridge.sinks.base import BrokerSink, DeliveryResult, SinkContext

if TYPE_CHECKING:
    import aio_pika
    from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

# Structured mode: the body is the whole CloudEvent (AMQP protocol binding, section 3.2).
CONTENT_TYPE = "application/cloudevents+json"
# The envelope attributes repeated as `cloudEvents:` headers, so that consumers and
# header-exchange bindings can route and filter without parsing the body.
_HEADER_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time")
# Seconds between the robust connection's reconnect attempts: events wait while it is down.
RECONNECT_INTERVAL = 1.0
DEFAULT_EXCHANGE = "ep-jobs"


class RabbitMQSubscription(SubscriptionBase):
    """Publish of each event to a durable topic exchange."""

    type: Literal["rabbitmq"] = "rabbitmq"
    url: Annotated[str, url("amqp", "amqps")]
    exchange: NonEmptyStr = DEFAULT_EXCHANGE


def routing_key(event: dict[str, Any]) -> str:
    """`<source>.<job_type>.<status>`, e.g. `pcm.product-import.failed`."""
    data = event["data"]
    parts = (data.get("source"), (data.get("job") or {}).get("type"), data.get("status"))
    # A dot inside a part would add a word, and bindings like `pcm.*.failed` would miss it.
    return ".".join(str(part or "").replace(".", "_") or "_" for part in parts)


class _Link(NamedTuple):
    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    exchange: AbstractExchange


class RabbitMQSink(BrokerSink[_Link]):
    """Publishes each event persistently; a delivery succeeds once the broker confirms it."""

    broker = "RabbitMQ"
    default_ports = {"amqp": 5672, "amqps": 5671}
    requires = ("aio_pika",)

    def __init__(
        self,
        name: str,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name, url, timeout=timeout, exchange=exchange)
        self._exchange_name = exchange

    @classmethod
    def from_config(cls, config: RabbitMQSubscription, context: SinkContext) -> RabbitMQSink:
        return cls(config.name, config.url, exchange=config.exchange, timeout=config.timeout)

    def errors(self) -> tuple[type[BaseException], ...]:
        from aio_pika.exceptions import CONNECTION_EXCEPTIONS

        return tuple(CONNECTION_EXCEPTIONS)

    async def send(
        self, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        details["routing_key"] = key = routing_key(event)
        reason = await self._publish(_message(event, body), key)
        return DeliveryResult(ok=not reason, reason=reason)

    async def _publish(self, message: aio_pika.Message, key: str) -> str:
        """Empty once the broker confirmed the message, else why it did not."""
        from aio_pika.exceptions import DeliveryError, PublishError

        try:
            link = await self.client()
        except self.errors() as exc:
            return self.failure(exc)
        if not link.connection.connected.is_set():
            # The robust connection is reconnecting; publishing would wait for it.
            return f"not connected to RabbitMQ at {self.where} (reconnecting)"
        try:
            async with asyncio.timeout(self.timeout):
                await link.channel.ready()  # channel and exchange restored after a reconnect
                # mandatory: a message no queue is bound for comes back, and is not delivered.
                await link.exchange.publish(message, key, mandatory=True, timeout=self.timeout)
        except PublishError as exc:
            # Basic.Return: routed nowhere. Retried: a consumer may bind its queue meanwhile.
            why = getattr(exc.frame, "reply_text", "") or "unroutable"
            return f"RabbitMQ at {self.where} returned it: no queue bound for {key!r} ({why})"
        except DeliveryError as exc:
            # Basic.Nack or Basic.Reject: the broker could not take responsibility for it.
            frame = type(exc.frame).__name__
            return f"RabbitMQ at {self.where} did not accept the message ({frame})"
        except TimeoutError:
            return f"no publisher confirm from RabbitMQ at {self.where} within {self.timeout} s"
        except self.errors() as exc:
            return self.failure(exc)
        return ""

    async def connect(self) -> _Link:
        """Connection, channel and exchange; aio-pika restores them after a reconnect."""
        import aio_pika

        try:
            connection = await aio_pika.connect_robust(
                self.url,
                timeout=self.timeout,
                reconnect_interval=RECONNECT_INTERVAL,
                client_properties={"connection_name": f"jobs-bridge {self.name}"},
            )
        except self.errors() as exc:
            self.link.set(False, self.failure(exc))
            raise
        self.link.set(True)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            # Declared (and re-declared on every reconnect by aio-pika) so that publishing
            # never depends on someone having created the exchange first.
            exchange = await channel.declare_exchange(
                self._exchange_name,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                timeout=self.timeout,
            )
        except BaseException as exc:
            await connection.close()
            if isinstance(exc, self.errors()):
                # Connected, but the exchange cannot be used (declared with another type, no
                # permission): start over on the next delivery, after the operator fixed it.
                self.log.warning("exchange_declare_failed", reason=self.failure(exc))
            raise
        connection.close_callbacks.add(self._on_connection_closed)
        connection.reconnect_callbacks.add(self._on_reconnected)
        return _Link(connection, channel, exchange)

    async def disconnect(self, client: _Link) -> None:
        await client.connection.close()

    def _on_connection_closed(self, _connection: Any, exc: BaseException | None = None) -> None:
        if not self.closing:
            reason = self.failure(exc) if exc is not None else "connection closed"
            self.link.set(False, reason)

    def _on_reconnected(self, _connection: Any) -> None:
        self.link.set(True)

    def failure(self, exc: BaseException) -> str:
        from aio_pika.exceptions import ProbableAuthenticationError

        if isinstance(exc, ProbableAuthenticationError):
            return f"RabbitMQ at {self.where} refused the login (check user and password)"
        return super().failure(exc)


def _message(event: dict[str, Any], body: bytes) -> aio_pika.Message:
    import aio_pika

    headers: dict[str, Any] = {
        f"cloudEvents:{name}": str(event[name])
        for name in _HEADER_ATTRIBUTES
        if event.get(name) is not None
    }
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
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
