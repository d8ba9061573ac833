"""The outbound HTTP client: the private-address guard, URL checks and session defaults."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge import __version__
from bridge.events import build_event, encode
from bridge.httpclient import (
    AddressRefused,
    GuardedConnector,
    GuardedResolver,
    _guarded_socket,
    _SocketRefused,
    check_url,
    classify_address,
    make_session,
    parse_retry_after,
)
from bridge.sinks.webhook import WebhookSink

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def dialled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket of this test connects to.

    A tripwire as much as a record: connecting anywhere private other than loopback is stopped
    here, so a broken guard fails the test instead of sending packets into the office network.
    """
    loop = asyncio.get_running_loop()
    real_sock_connect = loop.sock_connect
    addresses: list[str] = []

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        addresses.append(address[0])
        if classify_address(ipaddress.ip_address(address[0])) not in (None, "loopback"):
            raise OSError(errno.EACCES, f"test tripwire: {address[0]} must never be dialled")
        await real_sock_connect(sock, address)

    monkeypatch.setattr(loop, "sock_connect", sock_connect)
    return addresses


class Counter:
    """A local server that counts the requests reaching it."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return web.Response(text="hello")


@pytest.fixture
async def local(aiohttp_server: ServerFactory) -> tuple[Counter, TestServer]:
    counter = Counter()
    return counter, await aiohttp_server(counter.app)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private (RFC 1918)"),
        ("172.16.5.4", "private (RFC 1918)"),
        ("172.31.255.255", "private (RFC 1918)"),
        ("192.168.1.1", "private (RFC 1918)"),
        ("169.254.169.254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
        ("100.127.255.254", "carrier-grade NAT (100.64.0.0/10)"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),  # TEST-NET-1
        ("198.18.0.1", "reserved"),  # benchmarking
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "reserved"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private (RFC 1918)"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::10.0.0.1", "private (RFC 1918)"),
        ("64:ff9b::127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::", "cloud metadata"),  # 6to4 of 169.254.169.254
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("::10.0.0.1", "private (RFC 1918)"),
        ("::169.254.169.254", "cloud metadata"),
        ("::ffff:0:127.0.0.1", "loopback"),  # IPv4-translated (SIIT)
        ("::ffff:0:192.168.1.1", "private (RFC 1918)"),
        ("::ffff:0:169.254.169.254", "cloud metadata"),
        ("64:ff9b::192.168.0.1", "private (RFC 1918)"),
        ("64:ff9b::169.254.169.254", "cloud metadata"),
        ("64:ff9b:1::10.0.0.1", "local-use NAT64"),
        ("64:ff9b:1::8.8.8.8", "local-use NAT64"),
        ("64:ff9b:1:ffff::1", "local-use NAT64"),
        ("fec0::1", "site-local (deprecated)"),
        ("feff::1", "site-local (deprecated)"),
        ("172.15.255.255", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::8.8.8.8", None),
        ("::ffff:0:8.8.8.8", None),
    ],
)
def test_classify_address(address: str, reason: str | None) -> None:
    assert classify_address(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:{port}/hook", "refused 127.0.0.1 (loopback): private networks"),
        ("http://[::1]:{port}/hook", "refused ::1 (loopback): private networks"),
        (
            "http://localhost:{port}/hook",
            "(loopback) for host localhost: private networks are not allowed",
        ),
        ("http://[::ffff:127.0.0.1]:{port}/hook", "refused ::ffff:127.0.0.1 (loopback)"),
        ("http://10.0.0.1/hook", "refused 10.0.0.1 (private (RFC 1918))"),
        ("https://10.0.0.1/hook", "refused 10.0.0.1 (private (RFC 1918))"),
        ("http://[::ffff:10.0.0.1]/hook", "(private (RFC 1918))"),
        ("http://[::127.0.0.1]:{port}/hook", "(loopback)"),
        ("http://[::ffff:0:127.0.0.1]:{port}/hook", "(loopback)"),
        ("http://[64:ff9b:1::a00:1]/hook", "(local-use NAT64)"),
        ("http://[fec0::1]/hook", "(site-local (deprecated))"),
        (
            "http://169.254.169.254/latest/meta-data/iam/",
            "refused 169.254.169.254 (cloud metadata)",
        ),
        ("http://[fd00:ec2::254]/latest/", "refused fd00:ec2::254 (cloud metadata)"),
    ],
)
async def test_guard_refuses_before_connecting(
    url: str, expected: str, local: tuple[Counter, TestServer], dialled: list[str]
) -> None:
    counter, server = local
    session = make_session(allow_private_networks=False, timeout=5)
    async with session:
        with pytest.raises(AddressRefused) as refused:
            await session.get(url.format(port=server.port), allow_redirects=False)
    assert expected in refused.value.reason
    assert "allow_private_networks" in str(refused.value)
    assert isinstance(refused.value, aiohttp.ClientError)
    assert dialled == []  # refused before any socket connected
    assert counter.requests == []


async def test_legacy_numeric_ipv4_is_not_a_way_around(
    local: tuple[Counter, TestServer], dialled: list[str]
) -> None:
    counter, server = local
    async with make_session(allow_private_networks=False, timeout=5) as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://2130706433:{server.port}/")  # 127.0.0.1 as one number
    assert dialled == []
    assert counter.requests == []


async def test_resolver_refuses_names_that_resolve_to_loopback() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(AddressRefused, match=r"\(loopback\) for host localhost"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


def test_socket_factory_refuses_before_creating_a_socket() -> None:
    with pytest.raises(_SocketRefused, match=r"refused 10\.0\.0\.1 \(private"):
        _guarded_socket(
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.0.0.1", 80))
        )
    sock = _guarded_socket(
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("93.184.216.34", 443))
    )
    sock.close()


class _ConnectorWithoutResolveCheck(GuardedConnector):
    """As if a future aiohttp stopped routing connections through `_resolve_host`."""

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        return await aiohttp.TCPConnector._resolve_host(self, host, port, traces=traces)


@pytest.mark.parametrize("host", ["10.0.0.1", "127.0.0.1"])
async def test_socket_factory_backstop_refuses_when_the_other_layers_are_skipped(
    host: str, local: tuple[Counter, TestServer], dialled: list[str]
) -> None:
    counter, server = local
    async with aiohttp.ClientSession(connector=_ConnectorWithoutResolveCheck()) as session:
        with pytest.raises(AddressRefused, match=rf"refused {re.escape(host)} \("):
            await session.get(f"http://{host}:{server.port}/")
    assert dialled == []
    assert counter.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_allowing_private_networks_admits_a_local_server(
    host: str, local: tuple[Counter, TestServer], dialled: list[str]
) -> None:
    counter, server = local
    async with make_session(allow_private_networks=True, timeout=5) as session:
        async with session.get(f"http://{host}:{server.port}/x", allow_redirects=False) as resp:
            assert resp.status == 200
            assert await resp.text() == "hello"
    assert len(counter.requests) == 1
    assert counter.requests[0].headers["user-agent"] == (
        f"jobs-bridge/{__version__} (+https://github.com/jobs-bridge/jobs-bridge)"
    )
    assert dialled  # the tripwire sees real connections
    assert all(ipaddress.ip_address(a).is_loopback for a in dialled)


async def test_session_settings(local: tuple[Counter, TestServer]) -> None:
    counter, server = local
    async with make_session(
        allow_private_networks=True, timeout=2.5, user_agent="probe/1", limit=3
    ) as session:
        assert session.timeout.total == 2.5
        assert session.connector is not None and session.connector.limit == 3
        await (await session.get(server.make_url("/"))).release()
    assert counter.requests[0].headers["user-agent"] == "probe/1"


@pytest.mark.parametrize(
    "url", ["http://example.com/hook", "https://example.com:8443/a?b=c", "HTTPS://EXAMPLE.COM/"]
)
def test_check_url_accepts_http_and_https(url: str) -> None:
    check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com:70/_token-abc",
        "ws://example.com/hook",
        "example.com/hook",
        "http:///no-host",
    ],
)
def test_check_url_rejects_other_schemes(url: str) -> None:
    with pytest.raises(ValueError) as rejected:
        check_url(url)
    assert "example.com" not in str(rejected.value)  # URLs may carry tokens: not echoed


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


async def test_webhook_sink_refused_by_the_guard_dead_letters(
    local: tuple[Counter, TestServer], dialled: list[str]
) -> None:
    counter, server = local
    sink = WebhookSink("guarded", str(server.make_url("/hook")), [SECRET])
    await sink.start()
    try:
        event = build_event(
            id="evt-1",
            store="us-main",
            source="pcm",
            status="failed",
            previous_status="started",
            sequence=2,
            time="2024-01-05T13:46:42.142Z",
            job={"id": "job-1", "type": "product-import", "status": "failed"},
        )
        result = await sink.deliver(event, encode(event))
    finally:
        await sink.close()
    assert not result.ok
    assert result.retryable is False
    assert result.disable is False
    assert result.status is None
    assert result.reason.startswith("refused 127.0.0.1 (loopback)")
    assert "allow_private_networks" in result.reason
    assert counter.requests == []
    assert dialled == []
