"""The config file's models: Redis, stores, subscriptions (one model per type), the API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator

from bridge.config.subscription import SubscriptionBase
from bridge.config.types import (
    DAY,
    HOUR,
    MINUTE,
    HttpUrl,
    Invalid,
    Listen,
    Loc,
    Model,
    NonEmptyStr,
    PositiveDuration,
    RedisUrl,
    Retention,
    Secret,
    StoreName,
    format_duration,
    is_loopback,
    split_listen,
    unique,
    url_credentials,
)
from bridge.jobs import Source
from bridge.sinks.registry import Subscription

LOG_LEVELS = ("debug", "info", "warning", "error")
LEASE_TTL_MIN = 3.0
LEASE_TTL_MAX = 10 * MINUTE
# Validation context of a config whose cross-references were checked on its raw data.
CROSS_CHECKED = "cross_checked"


class RedisConfig(Model):
    """Where the bridge keeps its state; no url means an embedded Redis under data_dir."""

    url: RedisUrl | None = None
    # url names one node of a Redis Cluster; the client discovers the rest.
    cluster: bool = False

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> RedisConfig:
        if self.cluster and self.url is None:
            message = "needs redis.url (a node of the cluster): the embedded Redis is one server"
            raise Invalid([(("cluster",), message)])
        return self


def _only_pcm() -> list[Source]:
    return ["pcm"]


class StoreConfig(Model):
    """One Elastic Path store to poll."""

    name: StoreName
    api_base: HttpUrl
    client_id: NonEmptyStr
    client_secret: Secret
    sources: Annotated[list[Source], Field(min_length=1)] = Field(default_factory=_only_pcm)
    poll_interval: PositiveDuration = 5.0
    idle_poll_interval: PositiveDuration = 30.0
    max_requests_per_second: float = Field(5.0, gt=0)
    backfill: Literal["baseline", "emit"] = "baseline"
    stall_after: PositiveDuration = 30 * MINUTE
    full_scan_interval: PositiveDuration = 15 * MINUTE
    page_limit: int = Field(100, ge=1, le=100)
    errors_limit: int = Field(100, ge=1)
    request_timeout: PositiveDuration = 30.0

    @field_validator("api_base")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        # Paths are joined as f"{api_base}/pcm/jobs"; a trailing slash would double it.
        return value.rstrip("/")

    @field_validator("sources")
    @classmethod
    def _sources_unique(cls, value: list[Source]) -> list[Source]:
        return unique(value)

    @field_validator("max_requests_per_second")
    @classmethod
    def _below_api_limit(cls, value: float) -> float:
        if value > 100:
            raise ValueError("must be at most 100 (the API's own limit)")
        return value

    @model_validator(mode="after")
    def _idle_not_faster(self) -> StoreConfig:
        if self.idle_poll_interval < self.poll_interval:
            least = format_duration(self.poll_interval)
            raise Invalid([(("idle_poll_interval",), f"must be at least poll_interval ({least})")])
        return self


class ApiConfig(Model):
    """The bridge's own HTTP API (health, dead letters, replay)."""

    listen: Listen = "127.0.0.1:8787"
    token: Secret | None = None

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        # Replay and dead-letter operations must not be open to the network by default.
        if self.token is None and not is_loopback(self.host):
            raise Invalid([(("token",), "is required when listen is not a loopback address")])
        return self


def cross_problems(
    store_names: Sequence[object], subscriptions: Sequence[tuple[object, object]]
) -> list[tuple[Loc, str]]:
    """Duplicate names and filters naming unknown stores; works on raw data and on models."""
    problems: list[tuple[Loc, str]] = []
    for section, names in (
        ("stores", store_names),
        ("subscriptions", [name for name, _ in subscriptions]),
    ):
        first: dict[str, int] = {}
        for index, name in enumerate(names):
            if not isinstance(name, str):
                continue
            if name in first:
                also = f"also {section}[{first[name]}]"
                problems.append(((section, index, "name"), f"duplicate name {name!r} ({also})"))
            first.setdefault(name, index)
    known = sorted({name for name in store_names if isinstance(name, str)})
    if not known:
        return problems
    for index, (_, filter_stores) in enumerate(subscriptions):
        if not isinstance(filter_stores, list):
            continue
        for position, store in enumerate(filter_stores):
            if isinstance(store, str) and store not in known:
                problems.append(
                    (
                        ("subscriptions", index, "filter", "stores", position),
                        f"unknown store {store!r} (stores: {', '.join(known)})",
                    )
                )
    return problems


class BridgeConfig(Model):
    """The whole config file."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    data_dir: Path = Path("./var")
    stores: Annotated[list[StoreConfig], Field(min_length=1)]
    subscriptions: list[Subscription] = Field(default_factory=list)
    api: ApiConfig | None = None
    allow_private_networks: bool = False
    outbox_retention: Retention = 7 * DAY
    outbox_max_entries: int = Field(1_000_000, ge=1000)
    dead_letter_retention: Retention = 30 * DAY
    attempt_retention: Retention = 7 * DAY
    attempt_log_max: int = Field(10_000, ge=100)
    consumer_retention: Retention = HOUR
    finished_job_retention: Retention = 30 * DAY
    # How long a poll lease outlives its holder: a dead process's stores are polled again
    # by another within it. Renewed every third of it.
    lease_ttl: PositiveDuration = 15.0
    log_level: str = "info"

    @field_validator("redis", "subscriptions", mode="before")
    @classmethod
    def _null_is_default(cls, value: object, info: ValidationInfo) -> object:
        # `subscriptions:` with every entry commented out parses as null; mean "none".
        if value is None:
            return {} if info.field_name == "redis" else []
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _lease_ttl_bounds(cls, value: float) -> float:
        # Below 3 s a slow Redis round trip or a pause of the process loses leases; above
        # 10 minutes a dead process's stores wait that long for another.
        if not LEASE_TTL_MIN <= value <= LEASE_TTL_MAX:
            raise ValueError(f"must be between 3s and 10m (got {format_duration(value)})")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})")
        return value.lower()

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> BridgeConfig:
        # parse_config checks them on the raw data, to report them with every other problem.
        if not (info.context or {}).get(CROSS_CHECKED):
            problems = cross_problems(
                [store.name for store in self.stores],
                [(sub.name, sub.filter.stores) for sub in self.subscriptions],
            )
            if problems:
                raise Invalid(problems)
        return self

    def subscription_allows_private(self, sub: SubscriptionBase) -> bool:
        """Whether an HTTP sink may connect to private addresses: its own setting, else ours."""
        own: bool | None = getattr(sub, "allow_private_networks", None)
        return self.allow_private_networks if own is None else own

    def secret_values(self) -> list[str]:
        """Every secret in the config, for the logger to mask: each secret field's value and
        the credentials of every URL."""
        return list(_secrets(self))


def _secrets(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, str):
        yield from url_credentials(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name))
    elif isinstance(value, list):
        for item in value:
            yield from _secrets(item)
