"""What every sink shares: a lazy connection, one timed and logged attempt, failures in words.

A sink module holds its subscription model and its sink class, and the config reads every
model through bridge.sinks.registry. So a sink module imports its client library (aiohttp,
redis, aio-pika, nats-py) where it connects or sends, never at the top: reading a config
stays light, and an optional extra is needed only by a subscription that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import structlog

from bridge.config.types import url_credentials, url_endpoint
from bridge.logs import redact_text, register_secrets

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = structlog.get_logger("bridge.sinks")

REASON_MAX = 300  # characters of a failure reason: one sentence, not a traceback

Client = TypeVar("Client")


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one delivery attempt did. The dispatcher decides retries and health from it."""

    ok: bool
    status: int | None = None  # HTTP status, when there was one
    reason: str = ""  # one readable sentence when not ok; never holds a secret
    retry_after: float | None = None  # seconds the destination asked us to wait
    retryable: bool = True  # False: retrying cannot help (dead-letter now)
    disable: bool = False  # True: the destination is gone (410, channel_not_found, ...)
    response_excerpt: str = ""  # first 1 KB of the response body, for the attempt log
    duration_ms: float = 0.0

    def took(self, duration_ms: float) -> DeliveryResult:
        """This result with its duration: `dataclasses.replace` spelt out (once per delivery,
        in a third of the time)."""
        return DeliveryResult(
            self.ok, self.status, self.reason, self.retry_after, self.retryable, self.disable,
            self.response_excerpt, duration_ms,
        )  # fmt: skip


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a time.perf_counter() reading), for DeliveryResult."""
    return round((time.perf_counter() - started) * 1000, 3)


def capped(text: str) -> str:
    """`text` with every known secret masked, cut to REASON_MAX: fit for a failure reason."""
    return redact_text(text)[:REASON_MAX]


def describe_error(exc: BaseException) -> str:
    """`TimeoutError` or `ConnectionError: reset by peer`: an error's class and message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may need besides its own subscription's settings."""

    redis: aioredis.Redis | None = None  # the bridge's own (Slack keeps message state there)
    allow_private_networks: bool = False  # this subscription's, resolved against the config's


class LinkState:
    """Whether a broker connection is up; logs the changes only, not one line per event."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.connected: bool | None = None

    def set(self, connected: bool, reason: str = "") -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            self._log.info("broker_connected")
        else:
            self._log.warning("broker_disconnected", reason=reason)


class Sink(ABC, Generic[Client]):
    """A destination for events. `deliver` never raises for destination failures.

    A sink says how it connects (`connect`, `disconnect`) and how it sends one event (`send`).
    The base connects on first use, times every attempt and writes its log line.
    """

    requires: ClassVar[tuple[str, ...]] = ()  # modules of the optional extra it needs

    def __init__(self, name: str, *, timeout: float, **log_context: Any) -> None:
        self.name = name
        self.timeout = timeout
        self.log = log.bind(subscription=name, **log_context)
        self.closing = False
        self._client: Client | None = None
        self._connect_lock = asyncio.Lock()

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any, context: SinkContext) -> Self:
        """The sink of one subscription, from its (validated) model."""

    @abstractmethod
    async def connect(self) -> Client:
        """A new connection (session, client) to the destination."""

    async def disconnect(self, client: Client) -> None:
        """Close what `connect` made."""

    def usable(self, client: Client) -> bool:
        """False when `client` is gone for good and the next use must connect anew."""
        return True

    async def ready(self, client: Client) -> None:
        """Set up what `client` needs before each use (under the connect lock); may raise."""

    @abstractmethod
    async def send(
        self, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        """Send one event; put what the attempt's log line should add into `details`."""

    def concurrency(self, configured: int) -> int:
        """How many deliveries may be in flight at once: the subscription's `concurrency`,
        unless this sink's deliveries wait on something they share (a Slack digest)."""
        return configured

    async def start(self) -> None:
        self.closing = False
        await self.client()

    async def close(self) -> None:
        self.closing = True
        client, self._client = self._client, None
        if client is not None:
            await self.disconnect(client)

    async def client(self) -> Client:
        """The connection: made on first use, and again when the last one is gone for good."""
        async with self._connect_lock:
            if self._client is None or not self.usable(self._client):
                self._client = await self.connect()
            await self.ready(self._client)
            return self._client

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult:
        details: dict[str, Any] = {}
        started = time.perf_counter()
        result = await self.send(event, body, details)
        result = result.took(elapsed_ms(started))
        self.log_attempt(event, result, details)
        return result

    def log_attempt(
        self, event: dict[str, Any], result: DeliveryResult, details: dict[str, Any]
    ) -> None:
        self.log.debug(
            "delivery_attempted",
            event_id=str(event["id"]),
            **details,
            ok=result.ok,
            reason=result.reason or None,
            duration_ms=result.duration_ms,
        )


class BrokerSink(Sink[Client]):
    """A sink that keeps a connection to a broker: named by its endpoint, never by its URL,
    and logging when the link goes down or comes back, not once per event."""

    broker: ClassVar[str]  # how messages name it: "RabbitMQ"
    default_ports: ClassVar[dict[str, int]]  # by URL scheme

    def __init__(self, name: str, url: str, *, timeout: float, **log_context: Any) -> None:
        self.url = url
        self.where = url_endpoint(url, self.default_ports)
        register_secrets(url_credentials(url))
        super().__init__(name, timeout=timeout, broker=self.where, **log_context)
        self.link = LinkState(self.log)

    @abstractmethod
    def errors(self) -> tuple[type[BaseException], ...]:
        """The client library's errors for an unreachable or failing broker."""

    async def start(self) -> None:
        # The broker may be down at start: connect() has said so, and a delivery connects
        # once it is back.
        with contextlib.suppress(*self.errors()):
            await super().start()

    def failure(self, exc: BaseException) -> str:
        """One sentence naming the broker and the error; client messages name hosts, not
        passwords, and known secrets are masked anyway."""
        return capped(f"{self.broker} at {self.where} failed ({describe_error(exc)})")
