"""Guards of the admin API: JSON errors, bearer token, Host check, content type, input parsing.

Every refusal is a JSON body `{"error": "..."}` (plus `errors: [{path, message}]` for a body
that does not validate), never a 500 for input a client controls.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

log = structlog.get_logger(__name__)

TOKEN = web.AppKey("token", str)

PROBES = frozenset({"/healthz", "/readyz"})  # open to probes, whatever their Host
# Open without a token: the probes, the API's description, and the console's static page
# (it carries no data; it asks for the token, then calls the API with it).
OPEN = PROBES | {"/", "/openapi.json"}
OPEN_PREFIX = "/console/"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DIGITS = re.compile(r"^[0-9]{1,9}$")

Model = TypeVar("Model", bound=BaseModel)


class ApiError(Exception):
    """A request the API refuses: its status and one readable sentence."""

    def __init__(
        self, status: int, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def json_error(
    status: int,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if errors is not None:
        body["errors"] = errors
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost: whatever went wrong, the client gets JSON and the right status."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message, exc.errors)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, exc.reason, headers=headers)
    except Exception:
        log.exception("api_request_failed", method=request.method, path=request.path)
        return json_error(500, "internal error (logged by the bridge)")


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost, *.localhost or a loopback IP."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8787
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:  # 127.0.0.1:8787, localhost:8787
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, given = header.strip().partition(" ")
    # Headers arrive decoded with surrogateescape: encode them back the same way, so bytes
    # that are not UTF-8 compare as unequal instead of failing.
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    matches = hmac.compare_digest(given_bytes, token.encode())
    return scheme.lower() == "bearer" and matches


@web.middleware
async def access(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer token when one is set; else only requests addressed to a loopback Host.

    Without a token the API listens on loopback only (the config insists), but a web page
    could still reach it through DNS rebinding: its requests then carry a foreign Host.
    """
    token = request.app[TOKEN]
    path = request.path
    if not token:
        host = request.headers.get("Host")
        if path not in PROBES and host is not None and not is_loopback_host(host):
            raise ApiError(403, f"Host {host!r} is not a loopback name or address")
    elif path not in OPEN and not path.startswith(OPEN_PREFIX):
        if not _bearer_matches(request.headers.get("authorization", ""), token):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    if request.method in BODY_METHODS and (request.method != "DELETE" or request.body_exists):
        if request.content_type != "application/json":
            raise ApiError(
                415, "requests that change something need content-type: application/json"
            )
    return await handler(request)


def int_query(request: web.Request, name: str, default: int, *, low: int = 1, high: int) -> int:
    """An integer query parameter; 400 unless digits >= low; values above `high` are capped."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _DIGITS.match(raw) or int(raw) < low:
        raise ApiError(400, f"query parameter {name!r} must be an integer of at least {low}")
    return min(int(raw), high)


async def json_body(request: web.Request, model: type[Model]) -> Model:
    """The request body, validated by `model`; 400 with every problem and its path if not."""
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"path": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors()
        ]
        raise ApiError(400, "invalid body: " + "; ".join(map(_line, errors)), errors) from None


def _line(error: dict[str, str]) -> str:
    return f"{error['path']}: {error['message']}"
