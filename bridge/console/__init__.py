"""The operator console: one static page and its assets, served by the bridge itself.

No build step and no CDN: the files next to this module are the whole console. The page
learns from a meta tag whether the API wants a token, so it never has to provoke a 401.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Everything from the bridge itself; nothing inline; not framable (the Replay button).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def add_routes(app: web.Application, *, token_required: bool) -> None:
    """GET / (the page) and GET /console/<asset>, answered from memory."""
    files = {name: _read(name) for name in ASSETS}
    page = _read("index.html").replace(b"{{auth}}", b"token" if token_required else b"none")

    async def index(_request: web.Request) -> web.Response:
        return web.Response(
            body=page, headers={**HEADERS, "Content-Type": "text/html; charset=utf-8"}
        )

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in files:
            raise web.HTTPNotFound(reason="no such console asset")
        return web.Response(body=files[name], headers={**HEADERS, "Content-Type": ASSETS[name]})

    app.router.add_get("/", index)
    app.router.add_get("/console/{asset}", asset)
