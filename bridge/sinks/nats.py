"""NATS sink: each event published to JetStream, deduplicated by event id within a window."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from bridge.logs import redact_text, register_secrets
from bridge.sinks import DeliveryResult, LinkState, elapsed_ms

log = structlog.get_logger(__name__)

# How long JetStream remembers a Nats-Msg-Id and drops a second publish of it. A retry
# follows a publish whose ack was lost, and the default schedule (5s, 5m, 30m) has made its
# first three retries within the hour; later duplicates are rarer, and consumers dedupe by
# event id anyway (delivery is at-least-once). The server keeps one entry per message in
# the window, so it is not made longer than that.
DUPLICATE_WINDOW = 3600.0
# Seconds between nats-py's reconnect attempts: events wait while the server is away.
RECONNECT_WAIT = 0.5
# A subject token must not hold the separator, wildcards or whitespace.
_UNSAFE = re.compile(r"[.*>\s]")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_REASON_MAX = 300
_ERRORS = (nats.errors.Error, OSError)  # OSError covers TimeoutError in Python 3.11


def _token(value: Any) -> str:
    return _UNSAFE.sub("_", str(value or "")) or "_"


def subject_for(prefix: str, event: dict[str, Any]) -> str:
    """`<prefix>.<store>.<source>.<job_type>.<status>`, e.g. `ep.jobs.eu.pcm.job-x.failed`."""
    data = event["data"]
    tokens = (data.get("store"), data.get("source"), (data.get("job") or {}).get("type"))
    return ".".join([prefix, *(_token(t) for t in tokens), _token(data.get("status"))])


class NatsSink:
    """Publishes each event to NATS; with `stream` set, success is JetStream's ack.

    With `stream=None` the event goes out on core NATS: success then means the server has
    it (a flush), not that any subscriber or stream kept it.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        subject_prefix: str = "ep.jobs",
        stream: str | None = "EP_JOBS",
        create_stream: bool = True,
        timeout: float = 15.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls"):
            raise ValueError("url must start with nats:// or tls://")
        if not all(_TOKEN.fullmatch(token) for token in subject_prefix.split(".")):
            raise ValueError("subject_prefix must be dot-separated tokens of [A-Za-z0-9_-]")
        if stream is not None and not _TOKEN.fullmatch(stream):
            raise ValueError("stream must be letters, digits, '_' and '-'")
        self.name = name
        self._url = url
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 4222}"
        # With no password, the user part is a token (nats://TOKEN@host).
        secret = parts.password or parts.username
        if secret:
            register_secrets([secret, unquote(secret)])
        self._prefix = subject_prefix
        self._stream = stream
        self._create_stream = create_stream
        self._timeout = timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._connect_lock = asyncio.Lock()
        self._closing = False
        self._last_error: Exception | None = None
        self._log = log.bind(subscription=name, broker=self._where, stream=stream)
        self._link = LinkState(self._log)

    async def start(self) -> None:
        self._closing = False
        # The server may be down at start: _open() has logged it, and deliver() connects once
        # it is back.
        with contextlib.suppress(*_ERRORS):
            await self._open()

    async def close(self) -> None:
        self._closing = True
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            await nc.close()

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult:
        event_id = str(event["id"])
        subject = subject_for(self._prefix, event)
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
        duplicate = False
        started = time.perf_counter()
        try:
            nc, js = await self._open()
            if not nc.is_connected:
                # nats-py is reconnecting by itself; a publish now could only wait or fail.
                reason = f"not connected to NATS at {self._where} (reconnecting)"
                result = DeliveryResult(ok=False, reason=reason, duration_ms=elapsed_ms(started))
            elif self._stream is None:
                await nc.publish(subject, body, headers=headers)
                await nc.flush(timeout=self._timeout)
                result = DeliveryResult(ok=True, duration_ms=elapsed_ms(started))
            else:
                # `stream=` makes the server refuse the message when the subject belongs to
                # some other stream, instead of storing it where nobody looks.
                ack = await js.publish(
                    subject, body, timeout=self._timeout, stream=self._stream, headers=headers
                )
                duplicate = ack.duplicate
                result = DeliveryResult(ok=True, duration_ms=elapsed_ms(started))
        except nats.errors.MaxPayloadError:
            # The same event will be just as large next time: retrying cannot help.
            reason = f"event of {len(body)} bytes exceeds max_payload of NATS at {self._where}"
            result = DeliveryResult(
                ok=False, reason=reason, retryable=False, duration_ms=elapsed_ms(started)
            )
        except nats.js.errors.NoStreamResponseError:
            # No stream listens on the subject (deleted, or never created): create it next time.
            self._stream_ready = False
            reason = f"no JetStream stream at {self._where} takes subject {subject}"
            result = DeliveryResult(ok=False, reason=reason, duration_ms=elapsed_ms(started))
        except TimeoutError:  # nats.errors.TimeoutError derives from it
            reason = f"no answer from NATS at {self._where} within {self._timeout} s"
            result = DeliveryResult(ok=False, reason=reason, duration_ms=elapsed_ms(started))
        except _ERRORS as exc:
            result = DeliveryResult(
                ok=False, reason=self._failure(exc), duration_ms=elapsed_ms(started)
            )
        self._log.debug(
            "delivery_attempted",
            event_id=event_id,
            subject=subject,
            ok=result.ok,
            duplicate=duplicate or None,
            reason=result.reason or None,
            duration_ms=result.duration_ms,
        )
        return result

    async def _open(self) -> tuple[Client, JetStreamContext]:
        """A connection (made on first use; nats-py reconnects it after) and a ready stream."""
        async with self._connect_lock:
            if self._nc is None or self._js is None or self._nc.is_closed:
                self._nc = await self._connect()
                self._js = self._nc.jetstream(timeout=self._timeout)
            nc, js = self._nc, self._js
            # While reconnecting, deliver() says so without waiting for the stream.
            if nc.is_connected and self._stream and self._create_stream and not self._stream_ready:
                try:
                    await self._ensure_stream(js, self._stream)
                except _ERRORS as exc:
                    # Connected, but no stream (JetStream off, subjects taken by another
                    # stream, no permission): try again on the next delivery.
                    self._log.warning("stream_setup_failed", reason=self._failure(exc))
                    raise
                self._stream_ready = True
            return nc, js

    async def _connect(self) -> Client:
        nc = Client()

        # Only the current client's events count: a client that failed its first connect is
        # closed below, and its close must not read as a lost connection.
        async def disconnected() -> None:
            if nc is self._nc and not self._closing:
                self._link.set(False, "connection lost; reconnecting")

        async def reconnected() -> None:
            if nc is self._nc:
                self._link.set(True)

        try:
            await nc.connect(
                servers=[self._url],
                name=f"jobs-bridge {self.name}",
                connect_timeout=min(self._timeout, 5.0),
                reconnect_time_wait=RECONNECT_WAIT,
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
            if isinstance(exc, _ERRORS):
                self._link.set(False, self._failure(exc))
            raise
        nc.options["max_reconnect_attempts"] = -1  # read on every reconnect: never give up
        self._link.set(True)
        return nc

    async def _ensure_stream(self, js: JetStreamContext, stream: str) -> None:
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
        self._log.info("stream_created", subjects=f"{self._prefix}.>")

    async def _on_error(self, exc: Exception) -> None:
        # Every failed reconnect attempt lands here; the transition is logged once instead.
        self._last_error = exc
        self._log.debug("broker_error", error=self._failure(exc))

    def _failure(self, exc: BaseException) -> str:
        where = f"NATS at {self._where}"
        if isinstance(exc, nats.errors.NoServersError):
            # nats-py says only that no server was left; the last attempt's error says why.
            cause = self._last_error
            if cause is None or isinstance(cause, nats.errors.NoServersError):
                return f"could not connect to {where}"
            return redact_text(f"could not connect to {where} ({_describe(cause)})")[:_REASON_MAX]
        return redact_text(f"{where} failed ({_describe(exc)})")[:_REASON_MAX]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
