"""The webhook sink against real local receivers that verify with the standardwebhooks package."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import new_secret
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bridge import __version__
from bridge.events import build_event, encode
from bridge.httpclient import make_session
from bridge.sinks import DeliveryResult
from bridge.sinks.webhook import WebhookSink, WebhookSubscription

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


SECRET_A, SECRET_B, SECRET_OTHER = new_secret(), new_secret(), new_secret()


def make_event(event_id: str = "3f1c2b8e-0d1a-5c1e-9a63-0c2f3b7e6a10") -> dict[str, Any]:
    return build_event(
        id=event_id,
        store="us-main",
        source="pcm",
        status="failed",
        previous_status="started",
        sequence=3,
        time="2024-01-05T13:46:42.142Z",
        job={
            "id": "2950cae3-1050-4c43-9fbd-2aa60dc5c249",
            "type": "product-import",
            "status": "failed",
            "meta": {"file": "catalogue été ✓.csv"},  # non-ASCII: bytes must survive as sent
        },
        errors=[{"message": "row 3: price is not a number"}],
    )


class Receiver:
    """A local webhook receiver: records every request, answers with `respond`."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.redirect_target_hits = 0
        self.respond: Handler = self.verify_with_secret_a
        self.app = web.Application()
        self.app.router.add_post("/hook", self.handle)
        self.app.router.add_route("*", "/target", self.target)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        return await self.respond(request)

    async def target(self, request: web.Request) -> web.Response:
        self.redirect_target_hits += 1
        return web.Response(status=204)

    async def verify_with_secret_a(self, request: web.Request) -> web.Response:
        return verify_response(SECRET_A, self.requests[-1])


def verify_response(secret: str, recorded: tuple[dict[str, str], bytes]) -> web.Response:
    headers, body = recorded
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError as exc:
        return web.Response(status=401, text=f"bad signature: {exc}")
    return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> tuple[Receiver, TestServer]:
    recv = Receiver()
    return recv, await aiohttp_server(recv.app)


@pytest.fixture
async def sink_for(
    receiver: tuple[Receiver, TestServer],
) -> AsyncIterator[Callable[..., Awaitable[WebhookSink]]]:
    """Started sinks pointed at the receiver (127.0.0.1, so private networks are allowed)."""
    _, server = receiver
    sinks: list[WebhookSink] = []

    async def make(
        secrets: list[str] | None = None, path: str = "/hook", **kwargs: Any
    ) -> WebhookSink:
        kwargs.setdefault("allow_private_networks", True)
        sink = WebhookSink(
            "downstream", str(server.make_url(path)), secrets or [SECRET_A], **kwargs
        )
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


async def deliver(sink: WebhookSink, event: dict[str, Any] | None = None) -> DeliveryResult:
    event = event or make_event()
    return await sink.deliver(event, encode(event))


async def test_signed_with_every_secret_and_body_sent_exactly(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    sink = await sink_for([SECRET_A, SECRET_B])
    event = make_event()
    body = encode(event)

    result = await sink.deliver(event, body)

    assert result.ok, result
    assert result.status == 204
    assert result.duration_ms > 0
    headers, received = recv.requests[0]
    assert received == body
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == event["id"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert (
        headers["User-Agent"]
        == f"jobs-bridge/{__version__} (+https://github.com/jobs-bridge/jobs-bridge)"
    )
    assert [s[:3] for s in headers["webhook-signature"].split(" ")] == ["v1,", "v1,"]
    # A receiver that knows either secret verifies; one that knows neither does not.
    assert Webhook(SECRET_A).verify(received, headers) == event
    assert Webhook(SECRET_B).verify(received, headers) == event
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_OTHER).verify(received, headers)


@pytest.mark.parametrize("receiver_secret", [SECRET_A, SECRET_B])
async def test_receivers_knowing_either_secret_accept(
    receiver_secret: str,
    receiver: tuple[Receiver, TestServer],
    sink_for: Callable[..., Awaitable[WebhookSink]],
) -> None:
    recv, _ = receiver

    async def verify(request: web.Request) -> web.Response:
        return verify_response(receiver_secret, recv.requests[-1])

    recv.respond = verify
    assert (await deliver(await sink_for([SECRET_A, SECRET_B]))).ok
    wrong = await deliver(await sink_for([SECRET_OTHER]))
    assert not wrong.ok
    assert wrong.status == 401
    assert wrong.response_excerpt.startswith("bad signature")


async def test_same_id_new_timestamp_on_every_attempt(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    sink = await sink_for()
    event = make_event()
    assert (await deliver(sink, event)).ok
    await asyncio.sleep(1.05)  # the timestamp has one-second resolution
    assert (await deliver(sink, event)).ok

    (first, _), (second, _) = recv.requests
    assert first["webhook-id"] == second["webhook-id"] == event["id"]
    assert int(second["webhook-timestamp"]) > int(first["webhook-timestamp"])
    assert first["webhook-signature"] != second["webhook-signature"]


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_any_2xx_is_success(
    status: int,
    receiver: tuple[Receiver, TestServer],
    sink_for: Callable[..., Awaitable[WebhookSink]],
) -> None:
    recv, _ = receiver

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text="" if status == 204 else "thanks")

    recv.respond = answer
    result = await deliver(await sink_for())
    assert result == DeliveryResult(
        ok=True,
        status=status,
        response_excerpt="" if status == 204 else "thanks",
        duration_ms=result.duration_ms,
    )


def answering(status: int, headers: dict[str, str] | None = None, text: str = "") -> Handler:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, headers=headers, text=text)

    return answer


async def test_500_with_retry_after_seconds(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    recv.respond = answering(500, {"Retry-After": "7"}, "database down")
    result = await deliver(await sink_for())
    assert not result.ok
    assert result.status == 500
    assert result.retryable and not result.disable
    assert result.retry_after == 7.0
    assert result.reason == "receiver answered 500 Internal Server Error"
    assert result.response_excerpt == "database down"


async def test_429_with_retry_after_http_date(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    recv.respond = answering(429, {"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    result = await deliver(await sink_for())
    assert result.status == 429 and result.retryable
    assert result.retry_after is not None and 27 <= result.retry_after <= 31
    assert result.reason == "receiver answered 429 Too Many Requests"


@pytest.mark.parametrize(
    ("status", "phrase"), [(408, "Request Timeout"), (503, "Service Unavailable")]
)
async def test_retryable_statuses(
    status: int,
    phrase: str,
    receiver: tuple[Receiver, TestServer],
    sink_for: Callable[..., Awaitable[WebhookSink]],
) -> None:
    recv, _ = receiver
    recv.respond = answering(status)
    result = await deliver(await sink_for())
    assert (result.ok, result.retryable, result.retry_after) == (False, True, None)
    assert result.reason == f"receiver answered {status} {phrase}"


async def test_other_4xx_retryable_with_clear_reason(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver

    async def answer(request: web.Request) -> web.Response:
        # The receiver's own reason phrase is free text: the sink uses the standard one.
        return web.Response(status=400, reason="Go Away " + SECRET_A, text="missing field")

    recv.respond = answer
    result = await deliver(await sink_for())
    assert (result.ok, result.status, result.retryable, result.disable) == (False, 400, True, False)
    assert result.reason == "receiver answered 400 Bad Request"
    assert result.response_excerpt == "missing field"


async def test_410_disables(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    recv.respond = answering(410, {"Retry-After": "60"})
    result = await deliver(await sink_for())
    assert (result.ok, result.status, result.disable, result.retryable) == (False, 410, True, False)
    assert result.retry_after is None
    assert result.reason == "receiver answered 410 Gone"


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("/target", "127.0.0.1"),
        ("http://127.0.0.1:{port}/target", "127.0.0.1"),
        ("https://elsewhere.example/target?token=abc", "elsewhere.example"),
    ],
)
async def test_redirects_are_not_followed(
    location: str,
    host: str,
    receiver: tuple[Receiver, TestServer],
    sink_for: Callable[..., Awaitable[WebhookSink]],
) -> None:
    recv, server = receiver
    recv.respond = answering(302, {"Location": location.format(port=server.port)})
    result = await deliver(await sink_for())
    assert (result.ok, result.status, result.retryable) == (False, 302, True)
    assert result.reason == f"redirects are not followed (got 302 to {host})"
    assert recv.redirect_target_hits == 0
    assert len(recv.requests) == 1


async def test_slow_receiver_times_out(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.Response(status=204)

    recv.respond = stall
    try:
        started = time.perf_counter()
        result = await deliver(await sink_for(timeout=0.2))
        assert time.perf_counter() - started < 2
    finally:
        release.set()
    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert result.reason == "timed out after 0.2 s"
    assert 150 <= result.duration_ms < 2000


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and now has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = WebhookSink(
        "closed",
        f"http://127.0.0.1:{port}/hook?token=s3cr3t",
        [SECRET_A],
        allow_private_networks=True,
    )
    await sink.start()
    try:
        result = await deliver(sink)
    finally:
        await sink.close()
    assert (result.ok, result.status, result.retryable, result.disable) == (
        False,
        None,
        True,
        False,
    )
    assert result.reason.startswith(f"could not connect to 127.0.0.1:{port} (ClientConnectorError")
    assert "s3cr3t" not in result.reason


async def test_response_excerpt_is_capped_at_1kb(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    recv.respond = answering(500, text="é" * 5000)
    result = await deliver(await sink_for())
    assert result.response_excerpt == "é" * 1024


async def test_endless_response_body_is_not_buffered(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, _ = receiver
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        await response.write(b"x" * 3000)
        await asyncio.wait_for(release.wait(), 10)  # the rest never comes while we wait
        return response

    recv.respond = stream
    try:
        result = await deliver(await sink_for(timeout=5))
    finally:
        release.set()
    assert result.ok and result.status == 200
    assert result.response_excerpt == "x" * 1024
    assert result.duration_ms < 4000


async def test_reasons_and_logs_never_hold_a_secret(
    receiver: tuple[Receiver, TestServer], sink_for: Callable[..., Awaitable[WebhookSink]]
) -> None:
    recv, server = receiver
    reasons: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for status, headers in [
            (500, None),
            (401, None),
            (302, {"Location": f"http://127.0.0.1:{server.port}/target?sig={SECRET_A}"}),
            (410, None),
        ]:
            recv.respond = answering(status, headers, text="nope")
            result = await deliver(await sink_for([SECRET_A, SECRET_B]))
            reasons.append(result.reason)
    assert all(reasons)
    secrets = [SECRET_A, SECRET_B, SECRET_A.removeprefix("whsec_"), SECRET_B.removeprefix("whsec_")]
    for text in [*reasons, *(repr(entry) for entry in logs)]:
        assert not any(secret in text for secret in secrets), text
    attempts = [entry for entry in logs if entry["event"] == "delivery_attempted"]
    assert [a["status"] for a in attempts] == [500, 401, 302, 410]
    assert {a["subscription"] for a in attempts} == {"downstream"}
    assert {a["event_id"] for a in attempts} == {make_event()["id"]}
    assert {a["log_level"] for a in attempts} == {"debug"}


@pytest.mark.parametrize(
    ("url", "secrets", "message"),
    [
        ("ftp://example.com/hook", [SECRET_A], "must be a URL starting with http://"),
        ("https://example.com/hook", [], "at least 1 item"),
        ("https://example.com/hook", ["whsec_"], "has no key after 'whsec_'"),
    ],
)
def test_bad_configuration_is_refused_up_front(url: str, secrets: list[str], message: str) -> None:
    # The subscription's model is where settings are checked; the sink is built from it.
    with pytest.raises(ValueError) as refused:
        WebhookSubscription(name="bad", url=url, secrets=secrets)
    assert message in str(refused.value)


async def test_shared_session_is_left_open(receiver: tuple[Receiver, TestServer]) -> None:
    _, server = receiver
    async with make_session(allow_private_networks=True, timeout=5) as session:
        sink = WebhookSink("shared", str(server.make_url("/hook")), [SECRET_A], session=session)
        await sink.start()
        assert (await deliver(sink)).ok
        await sink.close()
        assert not session.closed
