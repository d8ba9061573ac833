"""The sink registry: each subscription type's model and sink, and what reading a config loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.config import load_config
from bridge.sinks.base import SinkContext
from bridge.sinks.registry import SINKS, MissingExtra, build_sink

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
EXAMPLE_ENV = {
    "EP_CLIENT_ID": "client-id",
    "EP_CLIENT_SECRET": "example-client-secret",
    "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
    "BRIDGE_API_TOKEN": "example-api-token",
}


def test_each_type_is_the_type_its_model_names() -> None:
    for name, entry in SINKS.items():
        assert entry.model.model_fields["type"].default == name


def test_reading_a_config_imports_no_client_library() -> None:
    libraries = ("aiohttp", "aio_pika", "nats", "redis")
    code = (
        "import sys, bridge.config, bridge.sinks.registry\n"
        f"print([m for m in {libraries!r} if m in sys.modules])"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


async def test_every_subscription_of_the_example_builds_its_sink(redis_url: str) -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    redis = aioredis.Redis.from_url(redis_url)  # not connected: building a sink sends nothing
    try:
        for sub in config.subscriptions:
            sink = build_sink(sub, SinkContext(redis, config.subscription_allows_private(sub)))
            assert (type(sink), sink.name) == (SINKS[sub.type].sink, sub.name)
    finally:
        await redis.aclose()


def test_a_missing_extra_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aio_pika", None)  # as if not installed
    sub = SINKS["rabbitmq"].model(name="amqp", url="amqp://127.0.0.1/")

    with pytest.raises(MissingExtra) as missing:
        build_sink(sub, SinkContext())

    assert str(missing.value) == (
        "subscription 'amqp' (rabbitmq) needs an optional package: "
        "pip install 'jobs-bridge[rabbitmq]' (aio_pika is missing)"
    )
