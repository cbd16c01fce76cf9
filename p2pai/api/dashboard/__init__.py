"""The web dashboard at `/`: one page and its assets, all inside the package (no CDN, no build step).

The page reads the node's own API (GET /api/p2p, /v1/models, /metrics, /api/p2p/token) and
streams from /v1/chat/completions; its Content-Security-Policy lets it load and connect only to
the node that served it.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
DASHBOARD_PREFIX = "/dashboard/"
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

ASSETS = frozenset(path.name for path in STATIC.iterdir() if path.name != "index.html")
"""What the page loads; nothing else is served from the package."""
MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

dashboard_routes = web.RouteTableDef()


@dashboard_routes.get("/")
async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={
        "Content-Security-Policy": POLICY, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer"})


@dashboard_routes.get(DASHBOARD_PREFIX + "{name}")
async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers={"Content-Type": MEDIA[Path(name).suffix],
                                                    "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
