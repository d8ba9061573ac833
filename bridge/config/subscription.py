"""What every subscription has, whatever its destination: name, filter, retries, timeouts.

Each sink module defines its own subscription model on this base (bridge.sinks.registry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from bridge.config.types import (
    DAY,
    DEFAULT_RETRY_SCHEDULE,
    DEFAULT_TIMEOUT,
    Duration,
    Model,
    PositiveDuration,
    Status,
    SubscriptionName,
)
from bridge.jobs import Source


class Filter(Model):
    """Which events a subscription receives; an omitted key matches everything."""

    stores: list[str] | None = None
    sources: list[Source] | None = None
    job_types: list[str] | None = None
    statuses: list[Status] | None = None

    @field_validator("*")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must not be empty (leave the key out to match everything)")
        return value

    @property
    def matches_all(self) -> bool:
        """No key given: every event matches (checked first, per event)."""
        return (
            self.stores is None
            and self.sources is None
            and self.job_types is None
            and self.statuses is None
        )

    def matches_event(self, event: Mapping[str, Any]) -> bool:
        """Whether one of the bridge's CloudEvents passes this filter."""
        if self.matches_all:
            return True
        data = event["data"]
        return self.matches(data["store"], data["source"], data["job"]["type"], data["status"])

    def matches(self, store: str, source: str, job_type: str, status: str) -> bool:
        return all(
            allowed is None or value in allowed
            for allowed, value in (
                (self.stores, store),
                (self.sources, source),
                (self.job_types, job_type),
                (self.statuses, status),
            )
        )


class SubscriptionBase(Model):
    """What every subscription has, whatever its destination."""

    name: SubscriptionName
    type: str
    filter: Filter = Field(default_factory=Filter)
    retry_schedule: list[Duration] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    timeout: PositiveDuration = DEFAULT_TIMEOUT
    disable_after: PositiveDuration = 5 * DAY
    concurrency: int = Field(10, ge=1, le=100)
    # job: the events of one job arrive in `sequence` order (bridge.ordering); none: as they come
    ordering: Literal["none", "job"] = "none"
    enabled: bool = True

    @field_validator("retry_schedule")
    @classmethod
    def _some_retry(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("must list at least one delay, e.g. [5s] (failures are retried)")
        return value
