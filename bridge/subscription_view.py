"""A subscription as the API and the command line show it: every secret as "***", with its
origin and its health."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import BaseModel, SecretStr

from bridge.catalog import Subscriptions
from bridge.config import SubscriptionBase
from bridge.deliveries import Deliveries
from bridge.jobs import format_epoch

MASK = "***"
_TIMES = ("last_success_at", "last_failure_at", "failing_since")


def masked_url(value: str) -> str:
    """`value` with the secret of its user part (a password, or a lone token) as "***"."""
    try:
        parts = urlsplit(value)
        user, password = parts.username, parts.password
    except ValueError:
        return value
    if "://" not in value or (user is None and password is None):
        return value
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{user}:{MASK}" if password is not None else MASK
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _public(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, str):
        return masked_url(value)
    if isinstance(value, BaseModel):
        return {name: _public(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list | tuple):
        return [_public(item) for item in value]
    return value


def public_entry(sub: SubscriptionBase) -> dict[str, Any]:
    """Every setting of `sub` (durations in seconds); secret fields and URL passwords masked."""
    return _public(sub)


async def health(redis: aioredis.Redis, name: str) -> dict[str, Any]:
    """Enabled or why not, last success and failure, retries waiting, dead letters."""
    found = await Deliveries(redis).status(name)
    return {**found, **{key: format_epoch(found[key]) for key in _TIMES}}


async def subscription_view(redis: aioredis.Redis, sub: SubscriptionBase, origin: str) -> dict:
    entry = public_entry(sub)
    name = entry.pop("name")
    return {"name": name, "origin": origin, **entry, "health": await health(redis, name)}


async def subscription_views(redis: aioredis.Redis, subscriptions: Subscriptions) -> list[dict]:
    """Each subscription in effect, config file's first, as `subscription_view`."""
    return [
        await subscription_view(redis, sub, origin) for sub, origin in subscriptions.with_origins()
    ]
