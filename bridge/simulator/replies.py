"""JSON error replies in the shapes the seeds show, shared by every simulator route."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def json_error(http_status: int, /, **error: Any) -> web.Response:
    """A JSON:API error reply: `{"errors": [error]}`."""
    return web.json_response({"errors": [error]}, status=http_status)


def json_exception(exc_class: type[web.HTTPException], body: dict[str, Any]) -> web.HTTPException:
    """An HTTP exception with a JSON body, for replies raised from below a handler."""
    return exc_class(text=json.dumps(body), content_type="application/json")


def pcm_not_found() -> web.Response:
    return json_error(404, title="Not Found", status="404")


def v2_not_found() -> web.Response:
    return json_error(
        404,
        status=404,
        title="Resource Not Found",
        detail="The resource you are requesting does not exist",
    )


def unauthorized() -> web.Response:
    return json_error(401, status=401, title="Unable to validate access token")
