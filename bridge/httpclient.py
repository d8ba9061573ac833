"""Outbound HTTP for the HTTP sinks: pooled sessions, the private-address guard, reading answers."""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from bridge import __version__
from bridge.logs import redact_text

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

USER_AGENT = f"jobs-bridge/{__version__} (+https://github.com/jobs-bridge/jobs-bridge)"
ALLOWED_SCHEMES = frozenset({"http", "https"})
# How much of a receiver's answer an attempt record keeps, in characters.
EXCERPT_CHARS = 1024

# Instance-metadata endpoints hand out cloud credentials: the classic SSRF prize, so they get
# a reason of their own even where a broader rule (link-local, CGNAT, ULA) would refuse them.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
# IPv6 ranges whose last 32 bits are an IPv4 address that a packet to them ends up reaching.
_V4_EMBEDDING = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "64:ff9b::/96",  # NAT64, RFC 6052 well-known prefix
        "::ffff:0:0:0/96",  # IPv4-translated, RFC 2765 (SIIT)
        "::/96",  # IPv4-compatible, RFC 4291 (deprecated; :: and ::1 are judged as themselves)
    )
)
_V4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "carrier-grade NAT (100.64.0.0/10)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_V6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("fc00::/7", "unique-local"),
        # Local-use NAT64 (RFC 8215): translates to the operator's own IPv4 space.
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("ff00::/8", "multicast"),
    )
)


class AddressRefused(aiohttp.ClientConnectionError):
    """The guard refused a destination address; `reason` is one readable sentence.

    Deliberately not an OSError: aiohttp wraps OSErrors raised while resolving into
    ClientConnectorDNSError, which would bury the reason; a ClientError passes through as is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class _SocketRefused(PermissionError):
    """Raised by the socket factory; must be an OSError for aiohappyeyeballs to handle it."""


def classify_address(ip: IPAddress) -> str | None:
    """Why `ip` must not be a webhook destination, or None when it is a public address."""
    if ip in _METADATA:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        scopeless = ipaddress.IPv6Address(int(ip))  # fe80::1%eth0 -> fe80::1
        # An IPv6 address that carries an IPv4 one reaches that IPv4 host: judge the IPv4.
        embedded = scopeless.ipv4_mapped or scopeless.sixtofour
        if embedded is None and int(scopeless) > 1 and any(scopeless in n for n in _V4_EMBEDDING):
            embedded = ipaddress.IPv4Address(int(scopeless) & 0xFFFFFFFF)
        if embedded is not None:
            return classify_address(embedded)
        for net6, reason in _V6_RULES:
            if scopeless in net6:
                return reason
        return None if scopeless.is_global else "reserved"
    for net4, reason in _V4_RULES:
        if ip in net4:
            return reason
    # Documentation, benchmarking and protocol ranges (192.0.2.0/24, 198.18.0.0/15, ...).
    return None if ip.is_global else "reserved"


def refusal(address: str, host: str | None = None) -> str | None:
    """The guard's sentence for connecting to `address` (on behalf of `host`), or None."""
    ip = ipaddress.ip_address(address)
    why = classify_address(ip)
    if why is None:
        return None
    shown = str(ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        shown = f"::ffff:{ip.ipv4_mapped}"  # Python 3.11 would print ::ffff:7f00:1
    target = f" for host {host}" if host and host.strip("[]") != address else ""
    return (
        f"refused {shown} ({why}){target}: private networks are not allowed for this "
        "subscription (allow_private_networks: false)"
    )


def _check_all(host: str, addresses: Iterable[str]) -> None:
    # ANY bad answer refuses the lot: a name with one public and one private address would
    # otherwise reach the private one whenever the public one fails (happy eyeballs).
    for address in addresses:
        reason = refusal(address, host)
        if reason is not None:
            raise AddressRefused(reason)


class GuardedResolver(AbstractResolver):
    """Resolves names with aiohttp's resolver and refuses non-public answers."""

    def __init__(self, resolver: AbstractResolver | None = None) -> None:
        self._resolver = resolver or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        hosts = await self._resolver.resolve(host, port, family)
        _check_all(host, (h["host"] for h in hosts))
        return hosts

    async def close(self) -> None:
        await self._resolver.close()


def _guarded_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohappyeyeballs socket factory: the last check, on the exact address about to be dialled."""
    family, type_, proto, _, sockaddr = addr_info
    reason = refusal(sockaddr[0])
    if reason is not None:
        raise _SocketRefused(errno.EACCES, reason)
    return socket.socket(family=family, type=type_, proto=proto)


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that never dials a non-public address.

    Three layers, because each alone has a gap:
    - GuardedResolver checks DNS answers. But aiohttp does not call the resolver for IP
      literals (http://10.0.0.1/), so a resolver alone is bypassed by the simplest URL.
    - `_resolve_host` is the one place every connection gets its addresses from: literals,
      fresh DNS answers and DNS-cache hits alike. Checking its result covers literals and
      runs on every connection, so a rebinding name (public at config check, private at
      delivery) is judged on the addresses actually used, before any socket exists.
    - `_resolve_host` is private aiohttp API. The socket factory (public since aiohttp 3.12)
      sees the very sockaddr that connect() is given, so even if a future aiohttp stops
      routing through `_resolve_host`, no packet leaves for a refused address. This makes a
      peer-address check after connect redundant: it could only see the same address, and
      only after the SYN was sent.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(resolver=GuardedResolver(), socket_factory=_guarded_socket, **kwargs)

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        hosts = await super()._resolve_host(host, port, traces=traces)
        _check_all(host, (h["host"] for h in hosts))
        return hosts

    async def _create_connection(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> Any:
        try:
            return await super()._create_connection(req, traces, timeout)
        except aiohttp.ClientConnectorError as exc:
            # The socket factory tripped: give callers the same error as the other layers.
            if isinstance(exc.os_error, _SocketRefused):
                raise AddressRefused(exc.os_error.strerror or str(exc.os_error)) from exc
            raise


def check_url(url: str) -> None:
    """Raise ValueError unless `url` is an absolute http(s) URL with a host.

    The URL itself stays out of the message: webhook URLs often carry a token.
    """
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError) as exc:
        raise ValueError("is not a valid URL") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        shown = f"'{parsed.scheme}'" if parsed.scheme else "none"
        raise ValueError(f"only http and https URLs are accepted (scheme: {shown})")
    if not parsed.host:
        raise ValueError("URL has no host")


def make_session(
    *,
    allow_private_networks: bool,
    timeout: float,
    user_agent: str | None = None,
    limit: int = 100,
) -> aiohttp.ClientSession:
    """One pooled session for one HTTP destination, guarded unless private networks are allowed.

    Callers pass `allow_redirects=False` on each request: a redirect must not turn into a
    delivery somewhere else (the guard would still judge the new address).
    """
    connector: aiohttp.TCPConnector
    if allow_private_networks:
        connector = aiohttp.TCPConnector(limit=limit)
    else:
        connector = GuardedConnector(limit=limit)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"user-agent": user_agent or USER_AGENT},
        # Receivers must not be able to plant state that rides along on later deliveries,
        # and HTTP(S)_PROXY from the environment must not route around the guard.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


# Reading and describing answers: the same words for every HTTP sink.


@dataclass(frozen=True, slots=True)
class Answer:
    """A receiver's answer, its body read within limits."""

    status: int
    status_text: str  # `503 Service Unavailable`: the standard phrase, never the receiver's
    headers: Mapping[str, str]
    retry_after: float | None  # seconds, from Retry-After
    text: str  # the body read, decoded
    excerpt: str  # its first characters, secrets masked: for the attempt log


@dataclass(frozen=True, slots=True)
class Unreached:
    """No answer: the connection failed, timed out, or the guard refused the address."""

    reason: str  # one sentence naming the host, never the path or query
    retryable: bool = True


async def post(
    session: aiohttp.ClientSession,
    url: str | yarl.URL,
    body: bytes,
    headers: Mapping[str, str],
    *,
    session_timeout: float,
    max_bytes: int | None = None,
) -> Answer | Unreached:
    """POST `body` without following redirects: the answer (up to `max_bytes` of its body,
    else only what the excerpt takes), or why there was none. `session_timeout`: the
    session's timeout, named in the sentence when it ran out."""
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            if max_bytes is None:
                text = await read_excerpt(response)
            else:
                text = (await read_body(response, max_bytes)).decode(errors="replace")
    except AddressRefused as exc:
        return Unreached(exc.reason, retryable=False)
    except TimeoutError:  # aiohttp's timeouts all derive from it
        return Unreached(f"timed out after {session_timeout} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Unreached(describe_connection_failure(exc, yarl.URL(url)))
    return Answer(
        status=response.status,
        status_text=status_text(response.status),
        headers=response.headers,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        text=text,
        excerpt=redact_text(text[:EXCERPT_CHARS]) if text else "",
    )


async def read_body(
    response: aiohttp.ClientResponse, max_bytes: int, *, max_chars: int | None = None
) -> bytes:
    """At most `max_bytes` of the body; with `max_chars`, no more than it takes to hold that many.

    A body that stalls or breaks off comes back shorter instead of raising: the status line
    already said what the receiver thinks.
    """
    if response.content.at_eof():  # nothing (more) to read: most answers to a webhook
        return b""
    buffer = bytearray()
    try:
        while len(buffer) < max_bytes:
            chunk = await response.content.read(max_bytes - len(buffer))
            if not chunk:
                break
            buffer += chunk
            if (
                max_chars is not None
                and len(buffer) >= max_chars
                and len(buffer.decode(errors="ignore")) >= max_chars
            ):
                break
    except (TimeoutError, aiohttp.ClientError):
        pass
    return bytes(buffer)


async def read_excerpt(response: aiohttp.ClientResponse) -> str:
    """The first EXCERPT_CHARS characters of the body, reading only as much as that takes."""
    # A UTF-8 character is at most 4 bytes.
    raw = await read_body(response, 4 * EXCERPT_CHARS, max_chars=EXCERPT_CHARS)
    return raw.decode(errors="replace")[:EXCERPT_CHARS]


_STATUS_TEXTS = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


def status_text(status: int) -> str:
    """`503 Service Unavailable`: the standard phrase, never the receiver's free-text reason."""
    return _STATUS_TEXTS.get(status) or str(status)


def describe_connection_failure(exc: BaseException, url: yarl.URL) -> str:
    """One sentence naming the error class and the host, safe for logs and attempt records.

    The path and query are left out (webhook URLs carry tokens there) and known secrets masked.
    """
    where = f"{url.host}:{url.port}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        text = f"could not resolve {url.host} ({type(exc).__name__})"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        detail = exc.strerror or type(exc.os_error).__name__
        text = f"could not connect to {where} ({type(exc).__name__}: {detail})"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"connection to {where} failed ({type(exc).__name__}: {exc.strerror})"
    else:
        text = f"connection to {where} failed ({type(exc).__name__})"
    return redact_text(text)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
