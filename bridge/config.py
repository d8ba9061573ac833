"""The bridge's YAML config file: `${VAR}` substitution, validation, every problem with its path."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
import string
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import logs

Loc = tuple[str | int, ...]

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (
    5.0,
    5 * MINUTE,
    30 * MINUTE,
    2 * HOUR,
    5 * HOUR,
    10 * HOUR,
    10 * HOUR,
)

# Kept in step with bridge.events.EVENT_STATUSES by a test; spelled out so type checkers see it.
Status = Literal["pending", "started", "success", "failed", "cancelled", "stalled"]
Source = Literal["pcm", "v2"]
LOG_LEVELS = ("debug", "info", "warning", "error")
LINK_TEMPLATE_FIELDS = ("job_id", "store", "job_type", "source")


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one `<path>: <message>` line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Invalid(ValueError):
    """Raised by validators that know the exact sub-path of each problem (pydantic cannot)."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(message for _, message in self.problems))


# --- durations ---------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}
_DURATION_PART = r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)"
_DURATION = re.compile(rf"(?:{_DURATION_PART})+")
_DURATION_HINT = "(use 500ms, 5s, 30m, 2h or 5d)"


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `5s`, `30m`, `2h`, `5d` (or `1h30m`), a bare number, int or float."""
    # bool is an int to Python, but `timeout: yes` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r} {_DURATION_HINT}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.fullmatch(text):
                raise ValueError(f"invalid duration {value!r} {_DURATION_HINT}") from None
            seconds = sum(
                float(number) * _UNIT_SECONDS[unit]
                for number, unit in re.findall(_DURATION_PART, text)
            )
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r} {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    return seconds


def _format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be longer than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]


# --- field checks ------------------------------------------------------------------------
# Messages never repeat the input: many of these values are secrets or carry credentials.


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    *others, last = [f"{scheme}://" for scheme in schemes]
    expected = f"{', '.join(others)} or {last}" if others else last
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"is not a valid URL (expected {expected})") from None
    if parts.scheme.lower() not in schemes or "://" not in value:
        raise ValueError(f"must be a URL starting with {expected}")
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket path, e.g. unix:///run/redis.sock")
    elif not parts.hostname:
        raise ValueError(f"must be a URL starting with {expected}, with a host")
    return value


def _url(*schemes: str) -> AfterValidator:
    return AfterValidator(lambda value: _check_url(value, schemes))


def _secret_url(*schemes: str) -> AfterValidator:
    def check(value: SecretStr) -> SecretStr:
        _check_url(value.get_secret_value(), schemes)
        return value

    return AfterValidator(check)


def _name(pattern: str, allowed: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid name (use {allowed})")
        return value

    return AfterValidator(check)


def _check_whsec(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    if not secret.startswith("whsec_"):
        raise ValueError("must start with 'whsec_' (Standard Webhooks format: whsec_ + base64)")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError(
            "must be 'whsec_' followed by valid base64 (Standard Webhooks format)"
        ) from None
    if not key:
        raise ValueError("has no key after 'whsec_'")
    return value


def _check_link_template(value: str) -> str:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError:
        raise ValueError("has an unbalanced '{' or '}' (write '{{' or '}}' for a brace)") from None
    allowed = ", ".join(f"{{{name}}}" for name in LINK_TEMPLATE_FIELDS)
    unknown = sorted(fields - set(LINK_TEMPLATE_FIELDS))
    if unknown:
        listed = ", ".join(f"{{{name}}}" for name in unknown)
        raise ValueError(f"unknown placeholder {listed} (allowed: {allowed})")
    try:
        value.format(**dict.fromkeys(LINK_TEMPLATE_FIELDS, "x"))
    except (ValueError, KeyError, IndexError, AttributeError):
        raise ValueError(f"is not a valid template (placeholders: {allowed})") from None
    return value


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _split_listen(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8787 (port 0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("has an invalid IPv6 address between [ and ]") from None
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:8787")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"has an invalid host {host!r}")
    return host, int(port)


def _check_listen(value: str) -> str:
    _split_listen(value)
    return value


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unique(values: Sequence[Any]) -> list[Any]:
    seen: set[Any] = set()
    problems: list[tuple[Loc, str]] = []
    for index, value in enumerate(values):
        if value in seen:
            problems.append(((index,), f"{value!r} is listed twice"))
        seen.add(value)
    if problems:
        raise _Invalid(problems)
    return list(values)


NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
Secret = Annotated[SecretStr, AfterValidator(_non_empty_secret)]
HttpUrl = Annotated[str, _url("http", "https")]
RedisUrl = Annotated[str, _url("redis", "rediss", "unix")]
StoreName = Annotated[str, _name(r"[a-z0-9-]+", "lowercase letters, digits and '-'")]
SubscriptionName = Annotated[str, _name(r"[A-Za-z0-9_.-]+", "letters, digits, '_', '.' and '-'")]
WebhookSecret = Annotated[SecretStr, AfterValidator(_check_whsec)]


# --- models ------------------------------------------------------------------------------


class _Model(BaseModel):
    # hide_input_in_errors: a ValidationError printed as-is must not reveal a secret either.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class RedisConfig(_Model):
    """Where the bridge keeps its state; no url means an embedded Redis under data_dir."""

    url: RedisUrl | None = None


class StoreConfig(_Model):
    """One Elastic Path store to poll."""

    name: StoreName
    api_base: HttpUrl
    client_id: NonEmptyStr
    client_secret: Secret
    sources: Annotated[list[Source], Field(min_length=1)] = Field(default_factory=lambda: ["pcm"])
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
        return _unique(value)

    @field_validator("max_requests_per_second")
    @classmethod
    def _below_api_limit(cls, value: float) -> float:
        if value > 100:
            raise ValueError("must be at most 100 (the API's own limit)")
        return value

    @model_validator(mode="after")
    def _idle_not_faster(self) -> StoreConfig:
        if self.idle_poll_interval < self.poll_interval:
            raise _Invalid(
                [
                    (
                        ("idle_poll_interval",),
                        f"must be at least poll_interval ({_format_duration(self.poll_interval)})",
                    )
                ]
            )
        return self


class Filter(_Model):
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


class SubscriptionBase(_Model):
    """What every subscription has, whatever its destination."""

    name: SubscriptionName
    type: str
    filter: Filter = Field(default_factory=Filter)
    retry_schedule: list[Duration] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    timeout: PositiveDuration = 15.0
    disable_after: PositiveDuration = 5 * DAY
    concurrency: int = Field(10, ge=1, le=100)
    enabled: bool = True


class WebhookSubscription(SubscriptionBase):
    """HTTP POST of each event, signed the Standard Webhooks way."""

    type: Literal["webhook"] = "webhook"
    url: HttpUrl
    secrets: Annotated[list[WebhookSecret], Field(min_length=1)]
    allow_private_networks: bool | None = None


class SlackSubscription(SubscriptionBase):
    """A Slack message per event: incoming-webhook mode (webhook_url) or bot mode (token)."""

    type: Literal["slack"] = "slack"
    webhook_url: Annotated[SecretStr, _secret_url("http", "https")] | None = None
    token: Secret | None = None
    channel: NonEmptyStr | None = None
    api_base_url: HttpUrl = "https://slack.com/api/"
    link_template: Annotated[str, AfterValidator(_check_link_template)] | None = None
    group_window: Duration = 30.0
    group_threshold: int = Field(5, ge=1)
    allow_private_networks: bool | None = None

    @field_validator("api_base_url")
    @classmethod
    def _end_with_slash(cls, value: str) -> str:
        # Method names are appended (f"{api_base_url}chat.postMessage").
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _one_mode(self) -> SlackSubscription:
        webhook, bot = self.webhook_url is not None, self.token is not None
        problem: tuple[Loc, str] | None = None
        if webhook and bot:
            problem = ((), "set webhook_url (incoming webhook) or token (bot), not both")
        elif not webhook and not bot:
            problem = ((), "set webhook_url (incoming webhook) or token + channel (bot)")
        elif bot and self.channel is None:
            problem = (("channel",), "is required with token (bot mode)")
        elif webhook and self.channel is not None:
            problem = (("channel",), "is for bot mode (token); an incoming webhook has its own")
        if problem:
            raise _Invalid([problem])
        return self


class RedisStreamSubscription(SubscriptionBase):
    """XADD of each event to a Redis stream."""

    type: Literal["redis_stream"] = "redis_stream"
    url: RedisUrl
    stream: NonEmptyStr = "ep-jobs"
    maxlen: int | None = Field(100_000, ge=1)


class RabbitMQSubscription(SubscriptionBase):
    """Publish of each event to a durable topic exchange."""

    type: Literal["rabbitmq"] = "rabbitmq"
    url: Annotated[str, _url("amqp", "amqps")]
    exchange: NonEmptyStr = "ep-jobs"


_NATS_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class NatsSubscription(SubscriptionBase):
    """Publish of each event to NATS (JetStream when `stream` is set)."""

    type: Literal["nats"] = "nats"
    url: Annotated[str, _url("nats", "tls")]
    subject_prefix: str = "ep.jobs"
    stream: str | None = "EP_JOBS"
    create_stream: bool = True

    @field_validator("subject_prefix")
    @classmethod
    def _subject_tokens(cls, value: str) -> str:
        # Wildcards or empty tokens here would make every published subject invalid.
        if not all(_NATS_TOKEN.fullmatch(token) for token in value.split(".")):
            raise ValueError("must be dot-separated tokens of letters, digits, '_' and '-'")
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str | None) -> str | None:
        if value is not None and not _NATS_TOKEN.fullmatch(value):
            raise ValueError("must be letters, digits, '_' and '-' (a JetStream stream name)")
        return value


SUBSCRIPTION_TYPES: dict[str, type[SubscriptionBase]] = {
    "webhook": WebhookSubscription,
    "slack": SlackSubscription,
    "redis_stream": RedisStreamSubscription,
    "rabbitmq": RabbitMQSubscription,
    "nats": NatsSubscription,
}

Subscription = Annotated[
    WebhookSubscription
    | SlackSubscription
    | RedisStreamSubscription
    | RabbitMQSubscription
    | NatsSubscription,
    Field(discriminator="type"),
]


class ApiConfig(_Model):
    """The bridge's own HTTP API (health, dead letters, replay)."""

    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:8787"
    token: Secret | None = None

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        # Replay and dead-letter operations must not be open to the network by default.
        if self.token is None and not _is_loopback(self.host):
            raise _Invalid([(("token",), "is required when listen is not a loopback address")])
        return self


def _cross_problems(
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
                problems.append(
                    (
                        (section, index, "name"),
                        f"duplicate name {name!r} (also {section}[{first[name]}])",
                    )
                )
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


class BridgeConfig(_Model):
    """The whole config file."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    data_dir: Path = Path("./var")
    stores: Annotated[list[StoreConfig], Field(min_length=1)]
    subscriptions: list[Subscription] = Field(default_factory=list)
    api: ApiConfig | None = None
    allow_private_networks: bool = False
    outbox_retention: PositiveDuration = 7 * DAY
    finished_job_retention: PositiveDuration = 30 * DAY
    log_level: str = "info"

    @field_validator("redis", "subscriptions", mode="before")
    @classmethod
    def _null_is_default(cls, value: object, info: ValidationInfo) -> object:
        # `subscriptions:` with every entry commented out parses as null; mean "none".
        if value is None:
            return {} if info.field_name == "redis" else []
        return value

    @field_validator("finished_job_retention")
    @classmethod
    def _at_least_an_hour(cls, value: float) -> float:
        if value < HOUR:
            raise ValueError(f"must be at least 1h (got {_format_duration(value)})")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})")
        return value.lower()

    @model_validator(mode="after")
    def _cross_references(self) -> BridgeConfig:
        problems = _cross_problems(
            [store.name for store in self.stores],
            [(sub.name, sub.filter.stores) for sub in self.subscriptions],
        )
        if problems:
            raise _Invalid(problems)
        return self

    def subscription_allows_private(self, sub: SubscriptionBase) -> bool:
        """Whether an HTTP sink may connect to private addresses: its own setting, else ours."""
        own: bool | None = getattr(sub, "allow_private_networks", None)
        return self.allow_private_networks if own is None else own

    def secret_values(self) -> list[str]:
        """Every secret in the config, for the logger to mask."""
        values = [store.client_secret.get_secret_value() for store in self.stores]
        urls = [self.redis.url]
        for sub in self.subscriptions:
            if isinstance(sub, WebhookSubscription):
                values += [secret.get_secret_value() for secret in sub.secrets]
            elif isinstance(sub, SlackSubscription):
                values += [s.get_secret_value() for s in (sub.webhook_url, sub.token) if s]
            else:
                urls.append(sub.url)
        if self.api is not None and self.api.token is not None:
            values.append(self.api.token.get_secret_value())
        for url in urls:
            values += _url_credentials(url)
        return values


def _url_credentials(url: str | None) -> list[str]:
    if not url:
        return []
    parts = urlsplit(url)
    # With no password, the user part is a token (nats://TOKEN@host).
    secret = parts.password or parts.username
    return [secret, unquote(secret)] if secret else []


# --- loading -----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently resolves to the last."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value!r}",
                    key_node.start_mark,
                )
            seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(text: str, origin: str) -> dict[Any, Any]:
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes the offending line, maybe a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            message += f" ({exc.context})"
        raise ConfigError([f"{origin}: {where}{message}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{origin}: invalid YAML: {exc}"]) from None
    if data is None:
        raise ConfigError([f"{origin}: the file is empty (at least one store is required)"])
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{origin}: must be a mapping of keys (redis, stores, ...) at the "
                f"top level, not a {_kind(data)}"
            ]
        )
    return data


def _kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.S)


def _substitute(
    text: str, environ: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]
) -> str:
    def replace(match: re.Match[str]) -> str:
        token, body = match.group(0), match.group(1)
        if token == "$${":
            return "${"
        if body is None:
            problems.append((loc, "unclosed '${' (write '$${' for a literal '${')"))
            return token
        reference = _VARIABLE.fullmatch(body)
        if reference is None:
            problems.append((loc, "invalid reference: use ${NAME} or ${NAME:-default}"))
            return token
        name, default = reference.groups()
        value = environ.get(name)
        if default is not None:
            # As in the shell: `:-` also replaces a variable that is set but empty.
            return value if value else default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set"))
            return ""
        return value

    return _REFERENCE.sub(replace, text)


def _resolve(
    node: object, environ: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]
) -> object:
    """Substitute variables in every string scalar; the path of each is known for messages."""
    if isinstance(node, str):
        return _substitute(node, environ, loc, problems)
    if isinstance(node, dict):
        return {
            str(key): _resolve(value, environ, (*loc, str(key)), problems)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_resolve(item, environ, (*loc, index), problems) for index, item in enumerate(node)]
    return node


def _raw_names(data: dict[str, Any]) -> tuple[list[object], list[tuple[object, object]]]:
    def items(key: str) -> list[dict[str, Any]]:
        value = data.get(key)
        if not isinstance(value, list):
            return []
        return [item if isinstance(item, dict) else {} for item in value]

    subscriptions = []
    for sub in items("subscriptions"):
        filter_ = sub.get("filter")
        subscriptions.append(
            (sub.get("name"), filter_.get("stores") if isinstance(filter_, dict) else None)
        )
    return [store.get("name") for store in items("stores")], subscriptions


def _strip_tag(loc: Loc) -> Loc:
    # Pydantic puts the discriminator value into the path: subscriptions.0.webhook.url.
    if len(loc) > 2 and loc[0] == "subscriptions" and isinstance(loc[1], int):
        return loc[:2] + loc[3:]
    return loc


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) > 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validated the mapping at `loc` (a raw pydantic loc, tags included)."""
    current: Any = BridgeConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if get_origin(current) is not list:
                return None
            current = get_args(current)[0]
        elif get_origin(current) in (Union, types.UnionType):
            current = SUBSCRIPTION_TYPES.get(part)
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_PLAIN_MESSAGES = {
    "missing": "is required",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "list_type": "must be a list",
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_too_short": "must not be empty",
}


def _describe(error: Any) -> list[tuple[Loc, str]]:
    """Readable problems for one pydantic error; input values only where they cannot be secret."""
    raw_loc: Loc = tuple(error["loc"])
    loc = _strip_tag(raw_loc)
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    cause = ctx.get("error")
    type_names = ", ".join(SUBSCRIPTION_TYPES)
    if isinstance(cause, _Invalid):
        return [((*loc, *sub_loc), message) for sub_loc, message in cause.problems]
    if isinstance(cause, Exception):
        return [(loc, str(cause))]
    if kind == "extra_forbidden":
        model = _model_at(raw_loc[:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return [(loc, f"unknown key{allowed}")]
    if kind == "union_tag_invalid":
        return [((*loc, "type"), f"unknown type {ctx.get('tag')!r} (allowed: {type_names})")]
    if kind == "union_tag_not_found":
        return [((*loc, "type"), f"is required (one of: {type_names})")]
    if kind == "literal_error":
        return [(loc, f"must be {ctx.get('expected')} (got {error.get('input')!r})")]
    if kind == "too_short" and ctx.get("min_length") == 1:
        return [(loc, "must not be empty")]
    if kind in _PLAIN_MESSAGES:
        return [(loc, _PLAIN_MESSAGES[kind])]
    message: str = error["msg"]
    if message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
    return [(loc, message[:1].lower() + message[1:])]


def _document_order(
    node: object, loc: Loc = (), order: dict[Loc, int] | None = None
) -> dict[Loc, int]:
    order = {} if order is None else order
    order[loc] = len(order)
    if isinstance(node, list):
        node = dict(enumerate(node))
    if isinstance(node, dict):
        for key, child in node.items():
            _document_order(child, (*loc, key), order)
    return order


def _in_document_order(problems: list[tuple[Loc, str]], data: object) -> list[tuple[Loc, str]]:
    """Problems sorted as their values appear in the file; a missing key sorts with its parent."""
    order = _document_order(data)

    def position(problem: tuple[Loc, str]) -> int:
        loc = problem[0]
        while loc not in order:
            loc = loc[:-1]
        return order[loc]

    return sorted(problems, key=position)


def _format_loc(loc: Loc, origin: str) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or origin


def parse_config(
    text: str, environ: Mapping[str, str] | None = None, origin: str = "<config>"
) -> BridgeConfig:
    """Validate config text; raise ConfigError listing every problem found."""
    env = os.environ if environ is None else environ
    env_problems: list[tuple[Loc, str]] = []
    data = cast(dict[str, Any], _resolve(_read_yaml(text, origin), env, (), env_problems))
    problems = env_problems + _cross_problems(*_raw_names(data))
    config: BridgeConfig | None = None
    try:
        config = BridgeConfig.model_validate(data)
    except ValidationError as exc:
        # A missing variable left "" behind; its own validation error would only repeat it.
        unset = [loc for loc, _ in env_problems]
        problems += [
            (loc, message)
            for error in exc.errors(include_url=False)
            for loc, message in _describe(error)
            if not any(loc[: len(prefix)] == prefix for prefix in unset)
        ]
    if problems or config is None:
        lines = (
            f"{_format_loc(loc, origin)}: {m}" for loc, m in _in_document_order(problems, data)
        )
        raise ConfigError(dict.fromkeys(lines))
    logs.register_secrets(config.secret_values())
    return config


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a config file; raise ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror})"]) from None
    return parse_config(text, environ, origin=str(path))
