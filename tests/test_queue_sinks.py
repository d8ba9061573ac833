"""The queue sinks (Redis stream, RabbitMQ, NATS JetStream) against real brokers, no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import nats
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, DeliveryMode
from conftest import require_service
from helpers import eventually
from lanes_harness import dispatcher, dispatching, emit

from bridge.deliveries import Deliveries
from bridge.events import build_event, encode
from bridge.sinks import DeliveryResult, Sink
from bridge.sinks.nats import DUPLICATE_WINDOW, NatsSink, subject_for
from bridge.sinks.rabbitmq import CONTENT_TYPE, RabbitMQSink, RabbitMQSubscription, routing_key
from bridge.sinks.redis_stream import RedisStreamSink

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
# Short, so that a sink that waits for its timeout instead of failing fast shows up.
SINK_TIMEOUT = 5.0
# Long enough for a reconnect (aio-pika every 1 s, nats-py every 0.5 s), short enough to
# keep the file quick.
RECOVERY_DEADLINE = 15.0

Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def _tcp_reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbitmq_url() -> str:
    require_service("RabbitMQ", _tcp_reachable(RABBITMQ_URL, 5672))
    return RABBITMQ_URL


@pytest.fixture
def nats_url() -> str:
    require_service("NATS", _tcp_reachable(NATS_URL, 4222))
    return NATS_URL


def closed_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_event(
    n: int = 1,
    *,
    store: str = "us-main",
    source: str = "pcm",
    job_type: str = "product-import",
    status: str = "failed",
) -> dict[str, Any]:
    return build_event(
        id=str(uuid.uuid4()),
        store=store,
        source=source,
        status=status,
        previous_status="started",
        sequence=n,
        time="2024-01-05T13:46:42.142Z",
        job={
            "id": f"2950cae3-1050-4c43-9fbd-{n:012d}",
            "type": job_type,
            "status": status,
            "meta": {"file": "catalogue été ✓.csv"},  # non-ASCII must survive every hop
        },
        errors=[{"message": "row 3: price is not a number"}],
    )


async def deliver(sink: Sink, event: dict[str, Any]) -> DeliveryResult:
    return await sink.deliver(event, encode(event))


async def assert_fails_fast(sink: Sink, event: dict[str, Any]) -> DeliveryResult:
    """A delivery to a broker that is away: a retryable failure, well before the timeout."""
    started = time.monotonic()
    result = await deliver(sink, event)
    assert not result.ok
    assert result.retryable
    assert result.reason
    assert time.monotonic() - started < SINK_TIMEOUT - 1
    return result


async def deliver_until_ok(
    sink: Sink, event: dict[str, Any], done: Callable[[DeliveryResult], bool] | None = None
) -> list[DeliveryResult]:
    """Deliver again and again, as the dispatcher's retries would, until one succeeds (or is
    `done`)."""
    results: list[DeliveryResult] = []
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while time.monotonic() < deadline:
        result = await deliver(sink, event)
        results.append(result)
        if result.ok or (done is not None and done(result)):
            return results
        assert result.retryable, result.reason
        await asyncio.sleep(0.2)
    pytest.fail(f"no successful delivery within {RECOVERY_DEADLINE} s: {results[-1].reason}")


async def fail_after_outage(sink: Sink, event: dict[str, Any]) -> None:
    """After the broker went away, deliveries fail (the client may need a moment to notice)."""
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while time.monotonic() < deadline:
        started = time.monotonic()
        result = await deliver(sink, event)
        assert time.monotonic() - started < SINK_TIMEOUT - 1
        if not result.ok:
            assert result.retryable
            return
        await asyncio.sleep(0.1)
    pytest.fail("deliveries kept succeeding with the broker gone")


# --- a broker that can go away: a TCP proxy in front of the real one ---------------------


class TcpProxy:
    """Forwards a local port to a broker. stop() drops every connection and refuses new ones;
    start() listens on the same port again. The machine's brokers are never touched."""

    def __init__(self, connect: Connector) -> None:
        self._connect = connect
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for transport in self._transports:
            transport.abort()  # a reset, as when a broker dies, not a polite close
        self._transports.clear()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._transports.add(writer.transport)
        try:
            upstream_reader, upstream_writer = await self._connect()
            self._transports.add(upstream_writer.transport)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except OSError:
            writer.transport.abort()
        finally:
            self._handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        # One side ended: end the other, so that neither client nor broker is left waiting.
        writer.transport.abort()


def tcp_connector(host: str, port: int) -> Connector:
    return lambda: asyncio.open_connection(host, port)


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    """Proxies made by a test, stopped at its end whatever happened."""
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        await proxy.stop()


async def down_proxy(proxies: list[TcpProxy], connect: Connector) -> TcpProxy:
    """A proxy whose port is known but refused: the broker is 'down' until start()."""
    proxy = TcpProxy(connect)
    proxies.append(proxy)
    await proxy.start()
    await proxy.stop()
    return proxy


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


# --- Redis stream -----------------------------------------------------------------------


@pytest.fixture
async def redis_sinks() -> AsyncIterator[list[RedisStreamSink]]:
    made: list[RedisStreamSink] = []
    yield made
    for sink in made:
        await sink.close()


async def started_redis_sink(
    sinks: list[RedisStreamSink], url: str, **kwargs: Any
) -> RedisStreamSink:
    sink = RedisStreamSink("events", url, timeout=SINK_TIMEOUT, **kwargs)
    sinks.append(sink)
    await sink.start()
    return sink


async def test_redis_stream_entries_are_plain_fields(
    redis_url: str, redis_client: aioredis.Redis, redis_sinks: list[RedisStreamSink]
) -> None:
    sink = await started_redis_sink(redis_sinks, redis_url, stream="ep-jobs-test")
    events = [make_event(n) for n in (1, 2, 3)]
    for event in events:
        assert (await deliver(sink, event)).ok

    entries = await redis_client.xrange("ep-jobs-test")
    assert len(entries) == 3
    for (_entry_id, fields), event in zip(entries, events, strict=True):
        assert fields["id"] == event["id"]
        assert fields["type"] == "com.elasticpath.pcm.job.failed"
        assert fields["subject"] == event["subject"]
        assert fields["time"] == event["time"]
        assert fields["source"] == "/stores/us-main/pcm/jobs"
        assert json.loads(fields["data"]) == event["data"]
        assert fields["event"] == encode(event).decode()
        assert json.loads(fields["event"]) == event


async def test_redis_stream_maxlen_trims_approximately(
    redis_url: str, redis_client: aioredis.Redis, redis_sinks: list[RedisStreamSink]
) -> None:
    sink = await started_redis_sink(redis_sinks, redis_url, stream="ep-jobs-capped", maxlen=10)
    for n in range(500):
        assert (await deliver(sink, make_event(n))).ok
    # `MAXLEN ~` trims whole macro nodes (100 entries by default), so a little above 10.
    length = await redis_client.xlen("ep-jobs-capped")
    assert 10 <= length <= 200


async def test_redis_stream_target_down_is_retryable(
    redis_sinks: list[RedisStreamSink],
) -> None:
    url = f"redis://:stream-pw-8812@127.0.0.1:{closed_port()}/0"
    sink = await started_redis_sink(redis_sinks, url)  # start() does not fail
    result = await assert_fails_fast(sink, make_event())
    assert f"127.0.0.1:{urlsplit(url).port}" in result.reason
    assert "stream-pw-8812" not in result.reason


async def test_redis_stream_reconnects_when_target_returns(
    redis_url: str,
    redis_client: aioredis.Redis,
    proxies: list[TcpProxy],  # before the sinks: torn down after them
    redis_sinks: list[RedisStreamSink],
) -> None:
    kwargs = aioredis.ConnectionPool.from_url(redis_url).connection_kwargs
    if "path" in kwargs:  # the embedded Redis listens on a unix socket

        def connect() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return asyncio.open_unix_connection(kwargs["path"])

    else:
        connect = tcp_connector(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379))
    proxy = await down_proxy(proxies, connect)
    url = f"redis://127.0.0.1:{proxy.port}/{kwargs.get('db', 0)}"
    sink = await started_redis_sink(redis_sinks, url, stream="ep-jobs-proxied")

    await assert_fails_fast(sink, make_event(1))
    await proxy.start()
    assert (await deliver(sink, make_event(2))).ok
    # A pooled connection the outage cut: the sink must replace it, not keep failing.
    await proxy.stop()
    await fail_after_outage(sink, make_event(3))
    await proxy.start()
    await deliver_until_ok(sink, last := make_event(4))

    entries = await redis_client.xrange("ep-jobs-proxied")
    assert entries[-1][1]["id"] == last["id"]


# --- RabbitMQ ---------------------------------------------------------------------------


@pytest.fixture
async def amqp_channel(rabbitmq_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A consumer's own connection to the real broker, for binding queues and reading."""
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel()
    yield channel
    await connection.close()


@pytest.fixture
async def exchange_name(amqp_channel: aio_pika.abc.AbstractChannel) -> AsyncIterator[str]:
    name = f"ep-jobs-test-{uuid.uuid4().hex[:12]}"
    yield name
    await amqp_channel.exchange_delete(name)


async def bound_queue(
    channel: aio_pika.abc.AbstractChannel, exchange: str, binding_key: str
) -> AbstractQueue:
    # Declared by the consumer too, so that binding does not depend on the sink's start().
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, binding_key)
    return queue


async def get_message(queue: AbstractQueue, wait: float = 5.0) -> AbstractIncomingMessage | None:
    deadline = time.monotonic() + wait
    while True:
        message = await queue.get(fail=False, no_ack=True)
        if message is not None or time.monotonic() > deadline:
            return message
        await asyncio.sleep(0.05)


async def test_rabbitmq_publishes_routable_persistent_cloudevent(
    rabbitmq_url: str, amqp_channel: aio_pika.abc.AbstractChannel, exchange_name: str
) -> None:
    imports = await bound_queue(amqp_channel, exchange_name, "pcm.product-import.*")
    prices = await bound_queue(amqp_channel, exchange_name, "pcm.price-import.*")
    sink = RabbitMQSink("amqp", rabbitmq_url, exchange=exchange_name, timeout=SINK_TIMEOUT)
    await sink.start()
    try:
        event = make_event()
        body = encode(event)
        result = await sink.deliver(event, body)
        assert result.ok, result.reason
        assert result.duration_ms > 0
    finally:
        await sink.close()

    message = await get_message(imports)
    assert message is not None
    assert message.routing_key == "pcm.product-import.failed"
    assert message.exchange == exchange_name
    assert message.body == body
    assert message.message_id == event["id"]
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.content_type == CONTENT_TYPE
    assert message.type == "com.elasticpath.pcm.job.failed"
    assert message.timestamp == datetime(2024, 1, 5, 13, 46, 42, tzinfo=UTC)
    assert message.headers == {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": event["id"],
        "cloudEvents:source": "/stores/us-main/pcm/jobs",
        "cloudEvents:type": "com.elasticpath.pcm.job.failed",
        "cloudEvents:subject": event["subject"],
        "cloudEvents:time": "2024-01-05T13:46:42.142Z",
    }
    assert await get_message(prices, wait=0.5) is None


async def test_rabbitmq_reconnects_when_broker_returns(
    rabbitmq_url: str,
    amqp_channel: aio_pika.abc.AbstractChannel,
    exchange_name: str,
    proxies: list[TcpProxy],
) -> None:
    queue = await bound_queue(amqp_channel, exchange_name, "#")
    parts = urlsplit(rabbitmq_url)
    proxy = await down_proxy(
        proxies, tcp_connector(parts.hostname or "127.0.0.1", parts.port or 5672)
    )
    sink = RabbitMQSink(
        "amqp", with_port(rabbitmq_url, proxy.port), exchange=exchange_name, timeout=SINK_TIMEOUT
    )
    await sink.start()  # broker down: logged, not raised
    try:
        await assert_fails_fast(sink, make_event(1))
        await proxy.start()
        await deliver_until_ok(sink, first := make_event(2))
        # Now a connection that dies under the sink: aio-pika reconnects by itself.
        await proxy.stop()
        await fail_after_outage(sink, make_event(3))
        await proxy.start()
        await deliver_until_ok(sink, last := make_event(4))
    finally:
        await sink.close()

    received = []
    while (message := await get_message(queue, wait=0.5)) is not None:
        received.append(message.message_id)
    assert received[0] == first["id"]
    assert received[-1] == last["id"]


async def test_rabbitmq_password_never_in_reason(rabbitmq_url: str) -> None:
    parts = urlsplit(rabbitmq_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    cases = {
        # Nothing listens there.
        f"amqp://guest:guest@127.0.0.1:{closed_port()}/": "guest:guest",
        # The broker is there and refuses the login.
        f"amqp://guest:not-the-pw-4711@{host}:{port}/": "not-the-pw-4711",
    }
    for url, password in cases.items():
        sink = RabbitMQSink("amqp", url, exchange="ep-jobs-never-created", timeout=SINK_TIMEOUT)
        await sink.start()
        try:
            result = await assert_fails_fast(sink, make_event())
        finally:
            await sink.close()
        assert password not in result.reason
        assert "@" not in result.reason  # no URL userinfo at all


async def test_rabbitmq_redeclares_a_deleted_exchange(
    rabbitmq_url: str, amqp_channel: aio_pika.abc.AbstractChannel, exchange_name: str
) -> None:
    sink = RabbitMQSink("amqp", rabbitmq_url, exchange=exchange_name, timeout=SINK_TIMEOUT)
    await sink.start()
    try:
        await amqp_channel.exchange_delete(exchange_name)
        result = await deliver(sink, make_event(1))
        assert not result.ok and result.retryable
        assert exchange_name in result.reason
        # aio-pika reopens the channel, which declares the exchange again: a message is then
        # routed, nowhere yet (no queue bound), and comes back (mandatory).
        await deliver_until_ok(sink, make_event(2), done=lambda r: "no queue bound" in r.reason)
        queue = await bound_queue(amqp_channel, exchange_name, "pcm.#")
        assert (await deliver(sink, event := make_event(3))).ok
    finally:
        await sink.close()
    message = await get_message(queue)
    assert message is not None and message.message_id == event["id"]


async def test_rabbitmq_message_no_queue_takes_is_a_failed_delivery(
    rabbitmq_url: str, amqp_channel: aio_pika.abc.AbstractChannel, exchange_name: str
) -> None:
    """mandatory: before, a message to an exchange with no bound queue was "delivered"."""
    sink = RabbitMQSink("amqp", rabbitmq_url, exchange=exchange_name, timeout=SINK_TIMEOUT)
    await sink.start()
    try:
        result = await assert_fails_fast(sink, make_event(1))
        assert result.reason == (
            f"RabbitMQ at {sink.where} returned it: no queue bound for "
            "'pcm.product-import.failed' (NO_ROUTE)"
        )
        other = await bound_queue(amqp_channel, exchange_name, "v2.#")  # not for this one
        assert not (await deliver(sink, make_event(2))).ok
        queue = await bound_queue(amqp_channel, exchange_name, "pcm.#")
        assert (await deliver(sink, event := make_event(3))).ok
    finally:
        await sink.close()
    message = await get_message(queue)
    assert message is not None and message.message_id == event["id"]
    assert await get_message(other, wait=0.3) is None


async def test_rabbitmq_unroutable_is_retried_then_delivered_or_dead_lettered(
    rabbitmq_url: str,
    amqp_channel: aio_pika.abc.AbstractChannel,
    exchange_name: str,
    redis_client: aioredis.Redis,
) -> None:
    """Through the dispatcher: with no queue bound, the retries run; a queue bound meanwhile
    gets the event; with none bound by the end of the schedule, it is dead-lettered."""
    common = {"type": "rabbitmq", "url": rabbitmq_url, "exchange": exchange_name}
    patient = RabbitMQSubscription.model_validate(
        {**common, "name": "patient", "retry_schedule": ["500ms"] * 20,
         "filter": {"job_types": ["product-import"]}}
    )  # fmt: skip
    hasty = RabbitMQSubscription.model_validate(
        {**common, "name": "hasty", "retry_schedule": ["200ms"],
         "filter": {"job_types": ["price-import"]}}
    )  # fmt: skip
    deliveries = Deliveries(redis_client)
    async with dispatching(dispatcher(redis_client, [patient, hasty])):
        [waits] = await emit(redis_client, job_type="product-import")
        [drops] = await emit(redis_client, job_type="price-import")
        await eventually(lambda: _attempts(deliveries, "patient", waits, 3), 10, "retries")
        queue = await bound_queue(amqp_channel, exchange_name, "pcm.product-import.*")
        message = await get_message(queue, wait=10)
        [letter] = await eventually(lambda: deliveries.dead_letters("hasty"), 10, "a dead letter")
    assert message is not None and message.message_id == waits
    assert letter.event_id == drops and letter.attempts == 2
    assert "returned it: no queue bound for 'pcm.price-import.failed'" in letter.reason
    log = await deliveries.attempts_for_event(waits, ["patient"])
    assert [a["ok"] for a in log][-1] == 1 and all(a["ok"] == 0 for a in log[:-1])
    assert await deliveries.dead_letters("patient") == []


async def _attempts(deliveries: Deliveries, sub: str, event_id: str, count: int) -> bool:
    return len(await deliveries.attempts_for_event(event_id, [sub])) >= count


# --- NATS JetStream ---------------------------------------------------------------------


@pytest.fixture
async def jetstream(nats_url: str) -> AsyncIterator[nats.js.JetStreamContext]:
    connection = await nats.connect(nats_url)
    yield connection.jetstream()
    await connection.close()


@pytest.fixture
async def nats_names(jetstream: nats.js.JetStreamContext) -> AsyncIterator[tuple[str, str]]:
    """A subject prefix and stream of this test's own; the stream is deleted afterwards."""
    token = uuid.uuid4().hex[:12]
    prefix, stream = f"jbtest.{token}", f"JBTEST_{token.upper()}"
    yield prefix, stream
    try:
        await jetstream.delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass


@pytest.fixture
async def nats_sinks() -> AsyncIterator[list[NatsSink]]:
    made: list[NatsSink] = []
    yield made
    for sink in made:
        await sink.close()


async def started_nats_sink(sinks: list[NatsSink], url: str, names: tuple[str, str]) -> NatsSink:
    prefix, stream = names
    sink = NatsSink("nats", url, subject_prefix=prefix, stream=stream, timeout=SINK_TIMEOUT)
    sinks.append(sink)
    await sink.start()
    return sink


async def test_nats_publishes_to_jetstream_with_headers(
    nats_url: str,
    jetstream: nats.js.JetStreamContext,
    nats_names: tuple[str, str],
    nats_sinks: list[NatsSink],
) -> None:
    prefix, stream = nats_names
    sink = await started_nats_sink(nats_sinks, nats_url, nats_names)
    info = await jetstream.stream_info(stream)  # created by start()
    assert info.config.subjects == [f"{prefix}.>"]
    assert info.config.duplicate_window == DUPLICATE_WINDOW

    event = make_event()
    body = encode(event)
    result = await sink.deliver(event, body)
    assert result.ok, result.reason

    consumer = await jetstream.pull_subscribe(f"{prefix}.>", stream=stream)
    [message] = await consumer.fetch(1, timeout=5)
    assert message.subject == f"{prefix}.us-main.pcm.product-import.failed"
    assert message.data == body
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == event["id"]
    assert message.headers["Content-Type"] == "application/json"
    assert message.headers["ce-id"] == event["id"]
    assert message.headers["ce-type"] == "com.elasticpath.pcm.job.failed"
    assert message.headers["ce-source"] == "/stores/us-main/pcm/jobs"
    assert message.headers["ce-specversion"] == "1.0"
    await message.ack()


async def test_nats_same_event_twice_is_stored_once(
    nats_url: str,
    jetstream: nats.js.JetStreamContext,
    nats_names: tuple[str, str],
    nats_sinks: list[NatsSink],
) -> None:
    _prefix, stream = nats_names
    sink = await started_nats_sink(nats_sinks, nats_url, nats_names)
    event = make_event()
    assert (await deliver(sink, event)).ok
    assert (await deliver(sink, event)).ok  # a retry after a lost ack, say
    assert (await jetstream.stream_info(stream)).state.messages == 1
    assert (await deliver(sink, make_event(2))).ok
    assert (await jetstream.stream_info(stream)).state.messages == 2


async def test_nats_recreates_a_deleted_stream(
    nats_url: str,
    jetstream: nats.js.JetStreamContext,
    nats_names: tuple[str, str],
    nats_sinks: list[NatsSink],
) -> None:
    _prefix, stream = nats_names
    sink = await started_nats_sink(nats_sinks, nats_url, nats_names)
    await jetstream.delete_stream(stream)
    result = await deliver(sink, make_event(1))
    assert not result.ok and result.retryable
    assert "stream" in result.reason
    assert (await deliver(sink, make_event(2))).ok
    assert (await jetstream.stream_info(stream)).state.messages == 1


async def test_nats_core_publish_without_stream(
    nats_url: str, nats_names: tuple[str, str], nats_sinks: list[NatsSink]
) -> None:
    prefix, _stream = nats_names
    sink = NatsSink("nats", nats_url, subject_prefix=prefix, stream=None, timeout=SINK_TIMEOUT)
    nats_sinks.append(sink)
    await sink.start()
    subscriber = await nats.connect(nats_url)
    try:
        subscription = await subscriber.subscribe(f"{prefix}.>")
        await subscriber.flush()
        event = make_event(status="success")
        assert (await deliver(sink, event)).ok
        message = await subscription.next_msg(timeout=5)
    finally:
        await subscriber.close()
    assert message.subject == f"{prefix}.us-main.pcm.product-import.success"
    assert message.data == encode(event)
    assert message.headers is not None and message.headers["ce-id"] == event["id"]


async def test_nats_server_down_is_retryable(nats_sinks: list[NatsSink]) -> None:
    sink = NatsSink("nats", f"nats://s3cret-token@127.0.0.1:{closed_port()}", timeout=SINK_TIMEOUT)
    nats_sinks.append(sink)
    await sink.start()  # does not fail
    result = await assert_fails_fast(sink, make_event())
    assert "s3cret-token" not in result.reason


async def test_nats_reconnects_when_server_returns(
    nats_url: str,
    jetstream: nats.js.JetStreamContext,
    nats_names: tuple[str, str],
    proxies: list[TcpProxy],  # before the sinks: torn down after them
    nats_sinks: list[NatsSink],
) -> None:
    _prefix, stream = nats_names
    parts = urlsplit(nats_url)
    proxy = await down_proxy(
        proxies, tcp_connector(parts.hostname or "127.0.0.1", parts.port or 4222)
    )
    sink = await started_nats_sink(nats_sinks, with_port(nats_url, proxy.port), nats_names)

    await assert_fails_fast(sink, make_event(1))
    await proxy.start()
    await deliver_until_ok(sink, make_event(2))
    # Now a connection that dies under the sink: nats-py reconnects by itself.
    await proxy.stop()
    await fail_after_outage(sink, make_event(3))
    await proxy.start()
    await deliver_until_ok(sink, last := make_event(4))

    info = await jetstream.stream_info(stream)
    last_message = await jetstream.get_msg(stream, info.state.last_seq)
    assert last_message.headers is not None
    assert last_message.headers["Nats-Msg-Id"] == last["id"]


# --- names ------------------------------------------------------------------------------


def test_routing_key_and_subject_keep_one_token_per_part() -> None:
    event = make_event(store="us-main", source="pcm", job_type="odd.type *>", status="failed")
    assert routing_key(event) == "pcm.odd_type *>.failed"
    assert subject_for("ep.jobs", event) == "ep.jobs.us-main.pcm.odd_type___.failed"
    event["data"]["job"]["type"] = ""
    assert routing_key(event) == "pcm._.failed"
    assert subject_for("ep.jobs", event) == "ep.jobs.us-main.pcm._.failed"
