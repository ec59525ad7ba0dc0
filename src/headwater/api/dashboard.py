"""The dashboard: static files shipped in the package, served at ``/``.

How this works: ``/`` answers ``index.html``; ``/dashboard/...`` serves the
rest of ``static/`` (plain ES modules, CSS and the vendored uPlot, see
``scripts/vendor-dashboard-assets.sh``). Nothing is built or fetched at run
time. The page talks to the admin API like any client, server-sent event
streams included (read with ``fetch``, which shows a refusal's reason and
can send headers): with a token configured it asks for it once and sends it
as a bearer token; the page itself needs none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from headwater.api.http import Handler

STATIC_DIR: Final = Path(__file__).parent / "static"

# Security headers for the page: everything it loads comes from this server.
_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_HEADERS)


@web.middleware
async def static_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Revalidate the page's files on every load (an upgrade must not mix versions)."""
    response = await handler(request)
    if request.path.startswith("/dashboard/"):
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/dashboard/", STATIC_DIR, follow_symlinks=False)
