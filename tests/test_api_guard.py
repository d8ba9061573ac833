"""The admin API refuses bad requests with a 4xx JSON error, and is described by /openapi.json."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import pytest
from apikit import STORE, SUBSCRIPTION, bridge_with_api
from helpers import eventually
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from bridge.api import make_api
from bridge.apiguard import is_loopback_host


async def request(running, method: str, path: str, **kwargs) -> tuple[int, dict]:
    headers = {**running.auth, **kwargs.pop("headers", {})}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, running.base + path, headers=headers, **kwargs) as r:
            assert r.content_type == "application/json", (path, r.status, await r.text())
            return r.status, await r.json()


async def raw_status(base: str, header_line: bytes) -> tuple[int, bytes]:
    """Status of a GET /status sent byte for byte (aiohttp would not send these headers)."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + header_line
        + b"\r\n\r\n"
    )
    await writer.drain()
    reply = await reader.read()
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost:8787", True),
        ("LOCALHOST", True),
        ("console.localhost:80", True),
        ("127.0.0.1:8787", True),
        ("127.8.9.10", True),
        ("[::1]:8787", True),
        ("evil.example:8787", False),
        ("localhost.evil.example", False),
        ("10.0.0.5:8787", False),
        ("[::ffff:10.0.0.5]", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool):
    assert is_loopback_host(host) is loopback


async def test_without_a_token_only_loopback_hosts_are_served(
    aiohttp_server, redis_client, redis_url
):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url, token=None) as running:
        assert (await request(running, "GET", "/status"))[0] == 200
        status, body = await request(running, "GET", "/status", headers={"Host": "evil.example"})
        assert status == 403 and "loopback" in body["error"]
        for path in ("/", "/dlq", "/metrics", "/openapi.json"):
            async with aiohttp.ClientSession() as http:
                async with http.get(running.base + path, headers={"Host": "rebound.example"}) as r:
                    assert r.status == 403, path
        # Probes come from anywhere.
        assert (await request(running, "GET", "/healthz", headers={"Host": "pod-ip"}))[0] == 200
        status, _ = await request(running, "GET", "/status", headers={"Host": "localhost:1"})
        assert status == 200
        status, _ = await request(
            running, "POST", "/dlq/replay", data='{"all": true}', headers={"Host": "a.example"}
        )
        assert status == 403


async def test_bad_input_is_a_4xx_json_error(aiohttp_server, redis_client, redis_url):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        for path in (
            f"/subscriptions/{SUBSCRIPTION}/attempts?count=abc",
            f"/subscriptions/{SUBSCRIPTION}/attempts?count=-1",
            "/events?count=1.5",
            "/events?count=0",
            "/dlq?count=x",
            "/analytics?minutes=%E2%82%AC",
        ):
            status, body = await request(running, "GET", path)
            assert status == 400 and "must be an integer" in body["error"], path
        status, _ = await request(
            running, "GET", f"/subscriptions/{SUBSCRIPTION}/attempts?count=9999"
        )
        assert status == 200  # capped, not refused

        for path in (
            "/subscriptions/nope/attempts",
            "/dlq?subscription=nope",
            "/events?store=nope",
        ):
            status, body = await request(running, "GET", path)
            assert status == 404 and "nope" in body["error"], path
        assert (await request(running, "GET", "/no/such/route"))[0] == 404
        status, _ = await request(running, "GET", "/dlq/replay")
        assert status == 405

        for body, path in (
            ("not json", "(body)"),
            ("[1, 2]", "(body)"),
            ('{"id": 5}', "id"),
            ('{"id": "abc"}', "id"),
            ('{"all": "yes"}', "all"),
            ('{"all": true, "bogus": 1}', "bogus"),
        ):
            status, reply = await request(
                running,
                "POST",
                "/dlq/replay",
                data=body,
                headers={"content-type": "application/json"},
            )
            assert status == 400, body
            assert path == "(body)" or reply["errors"][0]["path"] == path, reply
        status, reply = await request(
            running, "POST", "/dlq/replay", json={"all": True, "id": "1-0"}
        )
        assert status == 400 and "exactly one" in reply["error"]
        status, reply = await request(
            running, "POST", "/dlq/replay", json={"all": True, "subscription": "nope"}
        )
        assert status == 404


async def test_changes_need_a_json_content_type(aiohttp_server, redis_client, redis_url):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        for headers in (
            {},
            {"content-type": "text/plain"},
            {"content-type": "application/x-www-form-urlencoded"},
        ):
            status, body = await request(
                running, "POST", "/dlq/replay", data='{"all": true}', headers=headers
            )
            assert status == 415 and "application/json" in body["error"], headers
        status, body = await request(
            running,
            "POST",
            "/dlq/replay",
            data='{"all": true}',
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert (status, body) == (200, {"queued": 0})


async def test_a_strange_authorization_header_is_a_401(aiohttp_server, redis_client, redis_url):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url) as running:
        for line in (
            b"Authorization: Bearer \xe9t\xe9",  # latin-1
            "Authorization: Bearer \u00e9t\u00e9".encode(),  # UTF-8
            b"Authorization: Basic bGV0LW1lLWlu",
            b"Authorization: bearer let-me-in-not",
        ):
            status, body = await raw_status(running.base, line)
            assert status == 401 and b"bearer token" in body, line
        status, _ = await raw_status(running.base, b"Authorization: bearer let-me-in")
        assert status == 200


def _validator(document: dict, schema: str) -> Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return Draft202012Validator(root)


async def test_openapi_describes_every_route_and_real_responses(
    aiohttp_server, redis_client, redis_url
):
    async with bridge_with_api(aiohttp_server, redis_client, redis_url, failing=True) as running:
        status, document = await request(
            running, "GET", "/openapi.json", headers={"authorization": ""}
        )
        assert status == 200
        validate_spec(document)
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in make_api(running.bridge, "t").router.routes()
            if route.method != "HEAD"
        }
        described = {(m, path) for path, ops in document["paths"].items() for m in ops}
        assert routes == described

        running.sim.create_job()
        await eventually(lambda: _dead_letter(running), what="a dead letter")
        [event] = (await request(running, "GET", "/events"))[1]["events"]
        checks = {
            "/status": "Status",
            "/events?count=5": "RecentEvents",
            f"/events?store={STORE}": "RecentEvents",
            f"/events/{event['id']}/attempts": "Attempts",
            f"/subscriptions/{SUBSCRIPTION}/attempts": "Attempts",
            "/dlq": "DeadLetters",
            "/dlq?count=1": "DeadLetters",
            "/analytics": "Analytics",
            "/readyz": "Readiness",
            "/healthz": "Health",
            "/events?count=x": "Error",
            "/subscriptions/nope/attempts": "Error",
        }
        for path, schema in checks.items():
            _, body = await request(running, "GET", path)
            _validator(document, schema).validate(body)
        _, body = await request(running, "POST", "/dlq/replay", json={"all": True})
        _validator(document, "ReplayResult").validate(body)
        assert body == {"queued": 1}


async def _dead_letter(running) -> bool:
    return bool((await request(running, "GET", "/dlq"))[1]["dead_letters"])
