"""The API's subscriptions, kept in Redis beside the config file's: validated, versioned, announced.

A change writes the entry and raises the version in one transaction, then publishes the new
version. Every running bridge re-reads the catalog on that message, and also whenever it sees
a version it has not applied (its safety net for a message it missed).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import TypeAdapter, ValidationError

from bridge.config import BridgeConfig, SubscriptionBase
from bridge.config.errors import describe
from bridge.config.types import Loc, SubscriptionName, format_loc
from bridge.keys import SUBSCRIPTIONS, SUBSCRIPTIONS_CHANNEL, SUBSCRIPTIONS_VERSION
from bridge.sinks.registry import SINKS, Subscription

log = structlog.get_logger(__name__)

_ENTRY = TypeAdapter(Subscription)
_NAME = TypeAdapter(SubscriptionName)
# describe() reads pydantic's paths as the config file's; an entry is subscriptions[0] there.
_AS_IN_FILE: Loc = ("subscriptions", 0)

CONFIG = "config"
API = "api"


class EntryInvalid(ValueError):
    """A subscription entry that cannot be used; each problem with its path in the entry."""

    def __init__(self, problems: Iterable[tuple[Loc, str]]) -> None:
        self.problems = list(dict.fromkeys(problems))
        lines = (f"{format_loc(loc) or 'entry'}: {message}" for loc, message in self.problems)
        super().__init__("; ".join(lines))

    def to_json(self) -> list[dict[str, str]]:
        return [{"path": format_loc(loc), "message": message} for loc, message in self.problems]


def parse_entry(name: str, body: object, stores: Sequence[str] | None = None) -> SubscriptionBase:
    """One subscription as the API takes it: an entry of the config file, without its `name`.

    Validated by the config file's own models, with its messages and paths (`url`,
    `filter.statuses[1]`). `stores`: the known store names a filter may use (None: unchecked).
    """
    if not isinstance(body, dict):
        raise EntryInvalid([((), "must be a mapping of keys (one subscription entry)")])
    problems: list[tuple[Loc, str]] = []
    try:
        _NAME.validate_python(name)
    except ValidationError as exc:
        problems += [(("name",), str(error["ctx"]["error"])) for error in exc.errors()]
    if "name" in body and body["name"] != name:
        problems.append((("name",), "must be left out, or be the name in the URL"))
    try:
        sub = _ENTRY.validate_python({**body, "name": name})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            error = {**error, "loc": (*_AS_IN_FILE, *error["loc"])}
            problems += [(loc[len(_AS_IN_FILE) :], message) for loc, message in describe(error)]
        raise EntryInvalid(problems) from None
    problems += _missing_extra(sub) + _unknown_stores(sub, stores)
    if problems:
        raise EntryInvalid(problems)
    return sub


def missing_extra(sub: SubscriptionBase) -> str | None:
    """Why this process cannot build the sink of `sub`, if it cannot: its extra is missing."""
    for module in SINKS[sub.type].sink.requires:
        if importlib.util.find_spec(module) is None:
            return f"needs an optional package: pip install 'jobs-bridge[{sub.type}]'"
    return None


def _missing_extra(sub: SubscriptionBase) -> list[tuple[Loc, str]]:
    missing = missing_extra(sub)
    return [] if missing is None else [(("type",), missing)]


def _unknown_stores(sub: SubscriptionBase, stores: Sequence[str] | None) -> list[tuple[Loc, str]]:
    if stores is None or sub.filter.stores is None:
        return []
    known = ", ".join(sorted(stores))
    return [
        (("filter", "stores", index), f"unknown store {store!r} (stores: {known})")
        for index, store in enumerate(sub.filter.stores)
        if store not in stores
    ]


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """The subscriptions in effect: the config file's, then the API's the file does not name."""

    file: Sequence[SubscriptionBase]
    api: dict[str, SubscriptionBase] = field(default_factory=dict)

    def all(self) -> list[SubscriptionBase]:
        return [sub for sub, _origin in self.with_origins()]

    def with_origins(self) -> list[tuple[SubscriptionBase, str]]:
        """Each subscription in effect and its origin: "config" or "api"."""
        names = {sub.name for sub in self.file}
        api = [(sub, API) for name, sub in self.api.items() if name not in names]
        return [*((sub, CONFIG) for sub in self.file), *api]

    def shadowed(self) -> list[str]:
        """API subscriptions that a subscription of the config file of the same name hides."""
        names = {sub.name for sub in self.file}
        return sorted(name for name in self.api if name in names)

    def get(self, name: str) -> tuple[SubscriptionBase, str] | None:
        """The subscription in effect called `name`, and its origin."""
        found = (pair for pair in self.with_origins() if pair[0].name == name)
        return next(found, None)


class Catalog:
    """The API's subscriptions in Redis: name -> the entry as it was given (JSON)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def read(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The version and every entry, read together."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(SUBSCRIPTIONS_VERSION)
            pipe.hgetall(SUBSCRIPTIONS)
            version, raw = await pipe.execute()
        return int(version or 0), {name: json.loads(entry) for name, entry in raw.items()}

    async def version(self) -> int:
        return int(await self.redis.get(SUBSCRIPTIONS_VERSION) or 0)

    async def put(self, name: str, entry: dict[str, Any]) -> bool:
        """Store `entry` (validated by parse_entry) under `name`; True when it is new."""
        entry = {key: value for key, value in entry.items() if key != "name"}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(SUBSCRIPTIONS, name, json.dumps(entry))
            pipe.incr(SUBSCRIPTIONS_VERSION)
            created, version = await pipe.execute()
        await self.redis.publish(SUBSCRIPTIONS_CHANNEL, version)
        return bool(created)

    async def delete(self, name: str) -> bool:
        """Forget `name`; False when there was no such entry."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(SUBSCRIPTIONS, name)
            pipe.incr(SUBSCRIPTIONS_VERSION)
            deleted, version = await pipe.execute()
        await self.redis.publish(SUBSCRIPTIONS_CHANNEL, version)
        return bool(deleted)

    async def subscriptions(self) -> tuple[int, dict[str, SubscriptionBase]]:
        """The version and every valid entry as its model; an invalid one is logged, skipped."""
        version, raw = await self.read()
        return version, parse_entries(raw)


def parse_entries(raw: dict[str, dict[str, Any]]) -> dict[str, SubscriptionBase]:
    """The models of stored entries. One that no longer validates (an upgrade changed a rule)
    is logged with every problem and left out: the others still work."""
    found = {}
    for name, entry in sorted(raw.items()):
        try:
            found[name] = parse_entry(name, entry)
        except EntryInvalid as exc:
            log.error("subscription_invalid", subscription=name, problems=exc.to_json())
    return found


async def read_subscriptions(redis: aioredis.Redis, config: BridgeConfig) -> Subscriptions:
    """The subscriptions in effect for `config`: what operator commands beside a bridge use."""
    _version, api = await Catalog(redis).subscriptions()
    return Subscriptions(config.subscriptions, api)


def effective_config(config: BridgeConfig, subscriptions: Subscriptions) -> BridgeConfig:
    """`config` with every subscription in effect, the API's included."""
    return config.model_copy(update={"subscriptions": subscriptions.all()})
