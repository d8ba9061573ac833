"""NATS sink: each event published to JetStream, deduplicated by event id within a window."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import field_validator

from bridge.config.subscription import SubscriptionBase
from bridge.config.types import DEFAULT_TIMEOUT, url
from bridge.sinks.base import BrokerSink, DeliveryResult, SinkContext, capped, describe_error

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

# How long JetStream remembers a Nats-Msg-Id and drops a second publish of it. A retry
# follows a publish whose ack was lost, and the default schedule (5s, 5m, 30m) has made its
# first three retries within the hour; later duplicates are rarer, and consumers dedupe by
# event id anyway (delivery is at-least-once). The server keeps one entry per message in
# the window, so it is not made longer than that.
DUPLICATE_WINDOW = 3600.0
# Seconds between nats-py's reconnect attempts: events wait while the server is away.
RECONNECT_WAIT = 0.5
DEFAULT_PREFIX = "ep.jobs"
DEFAULT_STREAM = "EP_JOBS"
# A subject token must not hold the separator, wildcards or whitespace.
_UNSAFE = re.compile(r"[.*>\s]")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class NatsSubscription(SubscriptionBase):
    """Publish of each event to NATS (JetStream when `stream` is set)."""

    type: Literal["nats"] = "nats"
    url: Annotated[str, url("nats", "tls")]
    subject_prefix: str = DEFAULT_PREFIX
    stream: str | None = DEFAULT_STREAM
    create_stream: bool = True

    @field_validator("subject_prefix")
    @classmethod
    def _subject_tokens(cls, value: str) -> str:
        # Wildcards or empty tokens here would make every published subject invalid.
        if not all(_TOKEN.fullmatch(token) for token in value.split(".")):
            raise ValueError("must be dot-separated tokens of letters, digits, '_' and '-'")
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.fullmatch(value):
            raise ValueError("must be letters, digits, '_' and '-' (a JetStream stream name)")
        return value


def _token(value: Any) -> str:
    return _UNSAFE.sub("_", str(value or "")) or "_"


def subject_for(prefix: str, event: dict[str, Any]) -> str:
    """`<prefix>.<store>.<source>.<job_type>.<status>`, e.g. `ep.jobs.eu.pcm.job-x.failed`."""
    data = event["data"]
    tokens = (data.get("store"), data.get("source"), (data.get("job") or {}).get("type"))
    return ".".join([prefix, *(_token(t) for t in tokens), _token(data.get("status"))])


class _Link(NamedTuple):
    nc: Client
    js: JetStreamContext


class NatsSink(BrokerSink[_Link]):
    """Publishes each event to NATS; with `stream` set, success is JetStream's ack.

    With `stream=None` the event goes out on core NATS: success then means the server has
    it (a flush), not that any subscriber or stream kept it.
    """

    broker = "NATS"
    default_ports = {"nats": 4222, "tls": 4222}
    requires = ("nats",)

    def __init__(
        self,
        name: str,
        url: str,
        *,
        subject_prefix: str = DEFAULT_PREFIX,
        stream: str | None = DEFAULT_STREAM,
        create_stream: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(name, url, timeout=timeout, stream=stream)
        self._prefix = subject_prefix
        self._stream = stream
        self._create_stream = create_stream
        self._stream_ready = False
        self._last_error: Exception | None = None

    @classmethod
    def from_config(cls, config: NatsSubscription, context: SinkContext) -> NatsSink:
        return cls(
            config.name,
            config.url,
            subject_prefix=config.subject_prefix,
            stream=config.stream,
            create_stream=config.create_stream,
            timeout=config.timeout,
        )

    def errors(self) -> tuple[type[BaseException], ...]:
        import nats.errors

        return (nats.errors.Error, OSError)  # OSError covers TimeoutError in Python 3.11

    async def send(
        self, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        import nats.errors
        import nats.js.errors

        details["subject"] = subject = subject_for(self._prefix, event)
        try:
            return await self._publish(subject, event, body, details)
        except nats.errors.MaxPayloadError:
            # The same event will be just as large next time: retrying cannot help.
            reason = f"event of {len(body)} bytes exceeds max_payload of NATS at {self.where}"
            return DeliveryResult(ok=False, reason=reason, retryable=False)
        except nats.js.errors.NoStreamResponseError:
            # No stream listens on the subject (deleted, or never created): create it next time.
            self._stream_ready = False
            reason = f"no JetStream stream at {self.where} takes subject {subject}"
            return DeliveryResult(ok=False, reason=reason)
        except TimeoutError:  # nats.errors.TimeoutError derives from it
            reason = f"no answer from NATS at {self.where} within {self.timeout} s"
            return DeliveryResult(ok=False, reason=reason)
        except self.errors() as exc:
            return DeliveryResult(ok=False, reason=self.failure(exc))

    async def _publish(
        self, subject: str, event: dict[str, Any], body: bytes, details: dict[str, Any]
    ) -> DeliveryResult:
        event_id = str(event["id"])
        headers = {
            "Nats-Msg-Id": event_id,
            "Content-Type": "application/json",
            "ce-specversion": str(event.get("specversion") or "1.0"),
            "ce-id": event_id,
            "ce-type": str(event.get("type") or ""),
            "ce-source": str(event.get("source") or ""),
            "ce-subject": str(event.get("subject") or ""),
            "ce-time": str(event.get("time") or ""),
        }
        nc, js = await self.client()
        if not nc.is_connected:
            # nats-py is reconnecting by itself; a publish now could only wait or fail.
            reason = f"not connected to NATS at {self.where} (reconnecting)"
            return DeliveryResult(ok=False, reason=reason)
        if self._stream is None:
            await nc.publish(subject, body, headers=headers)
            await nc.flush(timeout=self.timeout)  # type: ignore[arg-type]  # see connect()
            return DeliveryResult(ok=True)
        # `stream=` makes the server refuse the message when the subject belongs to some
        # other stream, instead of storing it where nobody looks.
        ack = await js.publish(
            subject, body, timeout=self.timeout, stream=self._stream, headers=headers
        )
        details["duplicate"] = ack.duplicate or None
        return DeliveryResult(ok=True)

    def usable(self, client: _Link) -> bool:
        return not client.nc.is_closed

    async def ready(self, client: _Link) -> None:
        # While reconnecting, deliver() says so without waiting for the stream.
        stream = self._stream
        if not stream or self._stream_ready or not self._create_stream:
            return
        if not client.nc.is_connected:
            return
        try:
            await self._ensure_stream(client.js, stream)
        except self.errors() as exc:
            # Connected, but no stream (JetStream off, subjects taken by another stream, no
            # permission): try again on the next delivery.
            self.log.warning("stream_setup_failed", reason=self.failure(exc))
            raise
        self._stream_ready = True

    async def connect(self) -> _Link:
        """A connection, made on first use; nats-py reconnects it after that."""
        from nats.aio.client import Client

        nc = Client()

        # Only the current client's events count: a client that failed its first connect is
        # closed below, and its close must not read as a lost connection.
        async def disconnected() -> None:
            if self._client is not None and nc is self._client.nc and not self.closing:
                self.link.set(False, "connection lost; reconnecting")

        async def reconnected() -> None:
            if self._client is not None and nc is self._client.nc:
                self.link.set(True)

        try:
            await nc.connect(
                servers=[self.url],
                name=f"jobs-bridge {self.name}",
                # nats-py hints these as int; it takes float seconds (asyncio timeouts).
                connect_timeout=min(self.timeout, 5.0),  # type: ignore[arg-type]
                reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
                # nats-py keeps retrying a first connect for as long as this allows, so the
                # first one gets one retry; once connected, reconnects are unlimited (below).
                max_reconnect_attempts=1,
                # Nothing is buffered while disconnected: a publish then fails at once, and
                # the dispatcher retries it, instead of it going out unacknowledged later.
                pending_size=0,
                error_cb=self._on_error,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            )
        except BaseException as exc:
            await nc.close()
            if isinstance(exc, self.errors()):
                self.link.set(False, self.failure(exc))
            raise
        nc.options["max_reconnect_attempts"] = -1  # read on every reconnect: never give up
        self.link.set(True)
        return _Link(nc, nc.jetstream(timeout=self.timeout))

    async def disconnect(self, client: _Link) -> None:
        await client.nc.close()

    async def _ensure_stream(self, js: JetStreamContext, stream: str) -> None:
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        try:
            await js.stream_info(stream)
            return  # an existing stream is the operator's: its settings are left alone
        except nats.js.errors.NotFoundError:
            pass
        # Two bridges racing here is harmless: creating an identical stream succeeds.
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{self._prefix}.>"],
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW,
            )
        )
        self.log.info("stream_created", subjects=f"{self._prefix}.>")

    async def _on_error(self, exc: Exception) -> None:
        # Every failed reconnect attempt lands here; the transition is logged once instead.
        self._last_error = exc
        self.log.debug("broker_error", error=self.failure(exc))

    def failure(self, exc: BaseException) -> str:
        import nats.errors

        if isinstance(exc, nats.errors.NoServersError):
            # nats-py says only that no server was left; the last attempt's error says why.
            cause = self._last_error
            if cause is None or isinstance(cause, nats.errors.NoServersError):
                return f"could not connect to NATS at {self.where}"
            return capped(f"could not connect to NATS at {self.where} ({describe_error(cause)})")
        return super().failure(exc)
