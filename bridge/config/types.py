"""The config's field types and their checks: durations, names, URLs, secrets, addresses.

Messages never repeat the input: many of these values are secrets or carry credentials.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, SecretStr

from bridge.jobs import JobStatus

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
DEFAULT_TIMEOUT = 15.0  # seconds one delivery attempt may take

# The status vocabulary as the config spells it: a Literal of the enum's values, so that
# pydantic names the allowed words (not the enum's members) when one is wrong.
if TYPE_CHECKING:
    Status = JobStatus
else:
    Status = Literal[tuple(status.value for status in JobStatus)]


class Invalid(ValueError):
    """Raised by validators that know the exact sub-path of each problem (pydantic cannot)."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{format_loc(loc)} {m}".lstrip() for loc, m in self.problems))


def format_loc(loc: Loc) -> str:
    """`subscriptions[2].url` from ("subscriptions", 2, "url")."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class Model(BaseModel):
    """The base of every config model: unknown keys are errors, not ignored."""

    # hide_input_in_errors: a ValidationError printed as-is must not reveal a secret either.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


# --- durations ---------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}
_DURATION_PART = r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)"
_DURATION = re.compile(rf"(?:{_DURATION_PART})+")
_DURATION_HINT = "(use 500ms, 5s, 30m, 2h or 5d)"
_HUMAN_UNITS = (("d", DAY), ("h", HOUR), ("min", MINUTE), ("s", 1.0))


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


def format_duration(seconds: float, *, human: bool = False) -> str:
    """`seconds` as the config writes it (`90s`, `30m`, `500ms`: exact, parses back), or for
    people (`human`): its two largest units, rounded (`6 min 37 s`, `2 h 5 min`, `0.5 s`)."""
    if not human:
        for unit in ("d", "h", "m", "s"):
            size = _UNIT_SECONDS[unit]
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{round(seconds * 1000)}ms"
    if seconds < 0:
        return "0 s"
    if seconds < 10:
        return f"{seconds:.3g} s"
    total = round(seconds)
    parts: list[str] = []
    for unit, size in _HUMAN_UNITS:
        if total >= size or (unit == "s" and not parts):
            parts.append(f"{int(total // size)} {unit}")
            total %= int(size)
    return " ".join(parts[:2])


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be longer than zero")
    return seconds


def _retention(value: object) -> float:
    seconds = parse_duration(value)
    if seconds < HOUR:
        raise ValueError(f"must be at least 1h (got {format_duration(seconds)})")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
# How long kept state lives: shorter than an hour is a typo (`1ms`), never a wish.
Retention = Annotated[float, BeforeValidator(_retention)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]


# --- text, names and lists ---------------------------------------------------------------


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _name(pattern: str, allowed: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid name (use {allowed})")
        return value

    return AfterValidator(check)


def unique(values: Sequence[Any]) -> list[Any]:
    """`values`, or Invalid naming each repeated one at its index."""
    seen: set[Any] = set()
    problems: list[tuple[Loc, str]] = []
    for index, value in enumerate(values):
        if value in seen:
            problems.append(((index,), f"{value!r} is listed twice"))
        seen.add(value)
    if problems:
        raise Invalid(problems)
    return list(values)


# --- URLs --------------------------------------------------------------------------------


def check_url(value: str, schemes: tuple[str, ...]) -> str:
    """`value`, or ValueError unless it is a URL of one of `schemes` with a host (or path)."""
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


def url(*schemes: str) -> AfterValidator:
    """The check of a URL field accepting `schemes`."""
    return AfterValidator(lambda value: check_url(value, schemes))


def secret_url(*schemes: str) -> AfterValidator:
    """The check of a secret URL field accepting `schemes`."""

    def check(value: SecretStr) -> SecretStr:
        check_url(value.get_secret_value(), schemes)
        return value

    return AfterValidator(check)


def url_credentials(value: str | None) -> list[str]:
    """The secret of a URL's user part, as written and decoded; none when it has none."""
    try:
        parts = urlsplit(value or "")
        # With no password, the user part is a token (nats://TOKEN@host).
        secret = parts.password or parts.username
    except ValueError:
        return []
    return [secret, unquote(secret)] if secret else []


def url_endpoint(value: str, default_ports: dict[str, int]) -> str:
    """`host:port` of a URL (its default port by scheme), or the socket path of a unix:// one;
    never its credentials: the part of a URL that messages may name."""
    parts = urlsplit(value)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or default_ports[parts.scheme]}"


# --- the listen address ------------------------------------------------------------------

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def split_listen(value: str) -> tuple[str, int]:
    """Host and port of `host:port` (`[::1]:8787` for IPv6); ValueError when malformed."""
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
    split_listen(value)
    return value


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
Secret = Annotated[SecretStr, AfterValidator(_non_empty_secret)]
HttpUrl = Annotated[str, url("http", "https")]
RedisUrl = Annotated[str, url("redis", "rediss", "unix")]
Listen = Annotated[str, AfterValidator(_check_listen)]
StoreName = Annotated[str, _name(r"[a-z0-9-]+", "lowercase letters, digits and '-'")]
SubscriptionName = Annotated[str, _name(r"[A-Za-z0-9_.-]+", "letters, digits, '_', '.' and '-'")]
