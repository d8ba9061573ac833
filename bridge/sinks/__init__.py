"""Sinks: one destination each. The dispatcher hands them an event; they report what happened."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol


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


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a time.perf_counter() reading), for DeliveryResult."""
    return round((time.perf_counter() - started) * 1000, 3)


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


class Sink(Protocol):
    """A destination for events. `deliver` never raises for destination failures."""

    name: str

    async def start(self) -> None: ...

    async def deliver(self, event: dict[str, Any], body: bytes) -> DeliveryResult: ...

    async def close(self) -> None: ...
