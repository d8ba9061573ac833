"""Subscriptions through the admin API of a running bridge: stored in Redis, effective at once
here and within seconds on every other bridge, secrets never shown, test events signed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiohttp
import jsonschema
import nats
import nats.js.errors
from conftest import ON_BOTH, RedisTarget, require_service
from fakeslack import WEBHOOK_PATH, FakeSlack
from helpers import (
    WebhookReceiver,
    eventually,
    free_port,
    make_config,
    new_secret,
    running,
    start_receiver,
    webhook,
)
from test_queue_sinks import NATS_URL, RABBITMQ_URL, _tcp_reachable

from bridge.catalog import Catalog
from bridge.deliveries import Deliveries
from bridge.keys import SUBSCRIPTIONS, SUBSCRIPTIONS_CHANNEL, SUBSCRIPTIONS_VERSION
from bridge.live import RECHECK
from bridge.simulator import Simulator, make_app

TOKEN = "let-me-in"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    """A running bridge with its API, the simulator it polls and its config-file webhook."""

    base: str
    http: aiohttp.ClientSession
    sim: Simulator
    fixed: WebhookReceiver
    bridge: Any

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        headers = {**AUTH, "content-type": "application/json"}
        data = None if body is None else json.dumps(body)
        async with self.http.request(method, self.base + path, data=data, headers=headers) as r:
            return r.status, await r.text()

    async def conforms(self, body: Any, schema: str) -> None:
        """`body` is what /openapi.json says a response of `schema` is."""
        document = json.loads((await self.call("GET", "/openapi.json"))[1])
        root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
        jsonschema.Draft202012Validator(root).validate(body)

    async def put(self, name: str, entry: dict[str, Any]) -> tuple[int, Any]:
        status, text = await self.call("PUT", f"/subscriptions/{name}", entry)
        return status, json.loads(text)


@contextlib.asynccontextmanager
async def api_bridge(aiohttp_server, redis_url, redis_client, **top: Any) -> AsyncIterator[Api]:
    sim = Simulator()
    sim_server = await aiohttp_server(make_app(sim))
    fixed = await start_receiver(aiohttp_server)
    port = free_port()
    config = make_config(
        redis_url,
        "subs",
        str(sim_server.make_url("")).rstrip("/"),
        [webhook("fixed", fixed.url, fixed.secret, allow_private_networks=True)],
        api={"listen": f"127.0.0.1:{port}", "token": TOKEN},
        **top,
    )
    async with running(config, redis_client) as bridge, aiohttp.ClientSession() as http:
        api = Api(f"http://127.0.0.1:{port}", http, sim, fixed, bridge)
        await eventually(lambda: _answers(api), what="the API")
        await eventually(lambda: _baseline_done(redis_client), what="the baseline")
        yield api


async def _answers(api: Api) -> bool:
    try:
        return (await api.call("GET", "/healthz"))[0] == 200
    except aiohttp.ClientConnectionError:
        return False


async def _baseline_done(redis) -> bool:
    return bool(await redis.hget("jb:{subs}:meta", "baseline:pcm"))


def hook_entry(receiver: WebhookReceiver, **options: Any) -> dict[str, Any]:
    entry = webhook("x", receiver.url, receiver.secret, allow_private_networks=True)
    del entry["name"]
    return {**entry, **options}


@ON_BOTH
async def test_put_replace_delete_take_effect_on_the_next_transition(
    aiohttp_server, any_redis: RedisTarget
):
    async with api_bridge(aiohttp_server, any_redis.config, any_redis.client) as api:
        first = await start_receiver(aiohttp_server)
        status, view = await api.put("team", hook_entry(first))
        assert status == 201 and view["origin"] == "api" and view["secrets"] == ["***"]
        job = api.sim.create_job()
        await eventually(lambda: (job, "pending") in first.received, what="the new subscription")
        status, text = await api.call("GET", "/status")
        assert [s["name"] for s in json.loads(text)["subscriptions"]] == ["fixed", "team"]

        second = await start_receiver(aiohttp_server)
        status, view = await api.put("team", hook_entry(second))
        assert status == 200 and view["url"] == second.url
        api.sim.set_status(job, "started")
        await eventually(lambda: (job, "started") in second.received, what="the replacement")
        await eventually(lambda: (job, "started") in api.fixed.received)
        assert (job, "started") not in first.received

        assert (await api.call("DELETE", "/subscriptions/team"))[0] == 204
        api.sim.set_status(job, "success")
        # The fence: the config file's subscription has the event, so it was routed.
        await eventually(lambda: (job, "success") in api.fixed.received)
        await asyncio.sleep(0.3)
        assert (job, "success") not in second.received
        assert (await api.call("GET", "/subscriptions/team"))[0] == 404
        assert (await api.call("DELETE", "/subscriptions/team"))[0] == 404
        # What it was sent stays readable.
        status, text = await api.call("GET", "/subscriptions/team/attempts")
        assert status == 200 and len(json.loads(text)["attempts"]) == 2


async def test_invalid_entries_answer_422_with_the_path_of_each_problem(
    aiohttp_server, redis_url, redis_client
):
    async with api_bridge(aiohttp_server, redis_url, redis_client) as api:
        status, body = await api.put(
            "bad",
            {
                "type": "webhook",
                "url": "ftp://example.com/hook",
                "secrets": ["not-a-secret"],
                "filter": {"statuses": ["done"], "stores": ["elsewhere"]},
                "colour": "blue",
            },
        )
        assert status == 422
        await api.conforms(body, "Error")
        paths = {error["path"]: error["message"] for error in body["errors"]}
        assert set(paths) == {"url", "secrets[0]", "filter.statuses[0]", "colour"}
        assert "http://" in paths["url"] and "unknown key" in paths["colour"]
        assert "not-a-secret" not in json.dumps(body)

        status, body = await api.put("bad", {**hook_entry(api.fixed), "filter": {"stores": ["x"]}})
        assert status == 422 and body["errors"][0]["path"] == "filter.stores[0]"
        status, body = await api.put("no good", hook_entry(api.fixed))
        assert status == 422 and body["errors"][0]["path"] == "name"
        status, body = await api.put("bad", {"type": "carrier-pigeon"})
        assert status == 422 and body["errors"][0]["path"] == "type"
        status, body = await api.put("bad", ["not", "a", "mapping"])
        assert status == 422 and body["errors"][0]["path"] == ""
        status, text = await api.call("PUT", "/subscriptions/bad", None)
        assert status == 400 and "JSON" in json.loads(text)["error"]
        assert (await api.call("GET", "/subscriptions/bad"))[0] == 404


async def test_config_file_subscriptions_are_read_only_here(
    aiohttp_server, redis_url, redis_client
):
    async with api_bridge(aiohttp_server, redis_url, redis_client) as api:
        status, body = await api.put("fixed", hook_entry(api.fixed))
        assert status == 409 and "config file" in body["error"]
        assert (await api.call("DELETE", "/subscriptions/fixed"))[0] == 409
        status, text = await api.call("GET", "/subscriptions/fixed")
        view = json.loads(text)
        assert status == 200 and view["origin"] == "config" and view["health"]["enabled"]


async def test_secrets_are_never_returned(aiohttp_server, redis_url, redis_client):
    secrets = {
        "webhook": new_secret(),
        "rotated": new_secret(),
        "slack_url": "T000/B000/slack-url-secret-123",
        "slack_token": "xoxb-slack-token-secret-456",
        "amqp": "amqp-password-789",
        "nats": "nats-token-012",
        "redis": "redis-password-345",
    }
    entries = {
        "hook": {
            "type": "webhook",
            "url": "https://example.com/hook",
            "secrets": [secrets["webhook"], secrets["rotated"]],
        },
        "chat": {
            "type": "slack",
            "webhook_url": f"https://hooks.slack.com/services/{secrets['slack_url']}",
        },
        "bot": {"type": "slack", "token": secrets["slack_token"], "channel": "#ops"},
        "amqp": {
            "type": "rabbitmq",
            "url": f"amqp://guest:{secrets['amqp']}@127.0.0.1:5672/",
            "exchange": "ep-jobs",
        },
        "nats": {"type": "nats", "url": f"nats://{secrets['nats']}@127.0.0.1:4222"},
        "stream": {"type": "redis_stream", "url": f"redis://:{secrets['redis']}@127.0.0.1:1/0"},
    }
    async with api_bridge(aiohttp_server, redis_url, redis_client) as api:
        texts = []
        for name, entry in entries.items():
            status, text = await api.call("PUT", f"/subscriptions/{name}", entry)
            assert status == 201, text
            texts += [text, (await api.call("GET", f"/subscriptions/{name}"))[1]]
        status, listing = await api.call("GET", "/subscriptions")
        texts.append(listing)
        for text in texts:
            for secret in [*secrets.values(), api.fixed.secret]:
                assert secret not in text
        await api.conforms(json.loads(listing), "Subscriptions")
        views = {view["name"]: view for view in json.loads(listing)["subscriptions"]}
        assert [views[name]["origin"] for name in ("fixed", *entries)] == ["config"] + ["api"] * 6
        assert views["hook"]["secrets"] == ["***", "***"]
        assert views["chat"]["webhook_url"] == "***" and views["bot"]["token"] == "***"
        assert views["amqp"]["url"] == "amqp://guest:***@127.0.0.1:5672/"
        assert views["nats"]["url"] == "nats://***@127.0.0.1:4222"
        assert views["stream"]["url"] == "redis://:***@127.0.0.1:1/0"
        assert views["fixed"]["secrets"] == ["***"] and "health" in views["fixed"]


async def test_test_event_is_signed_and_its_attempt_recorded(
    aiohttp_server, redis_url, redis_client
):
    async with api_bridge(aiohttp_server, redis_url, redis_client) as api:
        receiver = await start_receiver(aiohttp_server)
        await api.put("team", hook_entry(receiver))
        status, text = await api.call("POST", "/subscriptions/team/test")
        outcome = json.loads(text)
        assert status == 200
        await api.conforms(outcome, "TestOutcome")
        assert outcome["ok"] is True and outcome["status"] == 204 and outcome["error"] is None
        assert outcome["duration_ms"] > 0
        [event] = receiver.events  # verified by standardwebhooks with the subscription's secret
        assert event["type"] == "com.elasticpath.bridge.test"
        assert event["data"]["job"]["type"] == "bridge-test" and event["data"]["store"] == "subs"
        attempts = await Deliveries(redis_client).attempts_for_subscription("team")
        assert [(a["event_id"], a["ok"], a["test"]) for a in attempts] == [(event["id"], 1, True)]
        health = json.loads((await api.call("GET", "/subscriptions/team"))[1])["health"]
        assert health["failing_since"] is None

        # A config-file subscription can be tested too; a dead endpoint says why.
        assert json.loads((await api.call("POST", "/subscriptions/fixed/test"))[1])["ok"]
        await api.put("dead", hook_entry(receiver, url=f"http://127.0.0.1:{free_port()}/x"))
        outcome = json.loads((await api.call("POST", "/subscriptions/dead/test"))[1])
        assert outcome["ok"] is False and outcome["status"] is None and outcome["error"]
        assert (await api.call("POST", "/subscriptions/nobody/test"))[0] == 404


@contextlib.asynccontextmanager
async def broker_names() -> AsyncIterator[tuple[str, str, str, Any]]:
    """A NATS subject prefix and stream, and a RabbitMQ exchange with a queue bound to it (its
    publishes are mandatory), of this test's own: the brokers are shared, so what the test
    made is deleted afterwards."""
    token = uuid.uuid4().hex[:12]
    prefix, stream, exchange = f"jbtest.{token}", f"JBTEST_{token.upper()}", f"jb-test-{token}"
    async with await aio_pika.connect(RABBITMQ_URL) as amqp:
        channel = await amqp.channel()
        bound = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(bound, "#")
        try:
            yield prefix, stream, exchange, queue
        finally:
            connection = await nats.connect(NATS_URL)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await connection.jetstream().delete_stream(stream)
            await connection.close()
            await channel.exchange_delete(exchange)


async def test_every_type_through_the_api(aiohttp_server, redis_url, redis_client):
    require_service("RabbitMQ", _tcp_reachable(RABBITMQ_URL, 5672))
    require_service("NATS", _tcp_reachable(NATS_URL, 4222))
    slack = FakeSlack()
    slack_url = str((await aiohttp_server(slack.app)).make_url(WEBHOOK_PATH))
    stream = f"jb-test-{time.time_ns()}"
    async with (
        broker_names() as (prefix, nats_stream, exchange, queue),
        api_bridge(aiohttp_server, redis_url, redis_client) as api,
    ):
        entries = {
            "chat": {"type": "slack", "webhook_url": slack_url, "allow_private_networks": True},
            "stream": {"type": "redis_stream", "url": redis_url, "stream": stream},
            "amqp": {"type": "rabbitmq", "url": RABBITMQ_URL, "exchange": exchange},
            "nats": {
                "type": "nats", "url": NATS_URL, "subject_prefix": prefix, "stream": nats_stream,
            },
        }  # fmt: skip
        for name, entry in entries.items():
            assert (await api.put(name, entry))[0] == 201
            outcome = json.loads((await api.call("POST", f"/subscriptions/{name}/test"))[1])
            assert outcome["ok"], (name, outcome)
        assert len(slack.messages) == 1
        message = await queue.get(timeout=5)
        assert json.loads(message.body)["type"] == "com.elasticpath.bridge.test"
        job = api.sim.create_job()

        async def in_stream() -> bool:
            return any(job in str(fields) for _id, fields in await redis_client.xrange(stream))

        await eventually(in_stream, what="the event in the Redis stream")
        await redis_client.delete(stream)


@ON_BOTH
async def test_another_bridge_sees_a_change_within_seconds(aiohttp_server, any_redis: RedisTarget):
    redis_client = any_redis.client
    async with api_bridge(aiohttp_server, any_redis.config, redis_client) as api:
        other_config = api.bridge.live.file_config.model_copy(update={"api": None})
        async with running(other_config, redis_client) as other:
            await eventually(lambda: "fixed" in other.dispatcher.subscriptions)
            receiver = await start_receiver(aiohttp_server)
            started = time.monotonic()
            await api.put("team", hook_entry(receiver))
            await eventually(lambda: "team" in other.dispatcher.subscriptions, timeout=5)
            assert time.monotonic() - started < 5
            # A change whose message was lost: the version check finds it.
            await redis_client.hdel(SUBSCRIPTIONS, "team")
            await redis_client.incr(SUBSCRIPTIONS_VERSION)
            await eventually(lambda: "team" not in other.dispatcher.subscriptions, timeout=5)


@ON_BOTH
async def test_a_change_is_announced_at_once(any_redis: RedisTarget) -> None:
    """The message every process listens for (bridge.live), before its version check would
    find the change (RECHECK): on the cluster, through its pub/sub and with the catalog's
    transaction in one slot."""
    catalog = Catalog(any_redis.client)
    pubsub = any_redis.client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(SUBSCRIPTIONS_CHANNEL)
        await catalog.put("team", {"type": "webhook", "url": "https://example.com/hook"})
        started = time.monotonic()
        message = await eventually(lambda: pubsub.get_message(timeout=0.1), RECHECK / 2)
        assert message["data"] == "1" and time.monotonic() - started < RECHECK
        assert await catalog.read() == (
            1,
            {"team": {"type": "webhook", "url": "https://example.com/hook"}},
        )
    finally:
        await pubsub.aclose()
