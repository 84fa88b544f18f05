"""The web dashboard's files, served at ``/ui`` by every replica (issue 19, D30).

The dashboard is static: one HTML page, plain ES modules and a style sheet in
``api/ui/``, shipped as package data (no build step, no CDN: it works offline).
Everything it shows it reads from the same HTTP API with the same bearer token,
kept in the browser's session storage. So these files carry no data and are
served without a token; the API calls they make are checked as usual.

Every answer here carries a Content-Security-Policy that allows scripts, styles
and connections from this origin only: no inline script or style, no ``eval``,
no frames, no plugins. The pages put every text from the API (task names,
payloads, errors) into the DOM as text, never as HTML, so a ``<script>`` in a
payload shows as those characters; the policy is the second wall behind that.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from taskstream.api.errors import ApiError

#: the path prefix of the dashboard (its pages and files; no token needed for these)
UI_PATH = "/ui"
STATIC_PATH = f"{UI_PATH}/static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # revalidate every time: an upgraded replica serves the files of its own version
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
INDEX = "index.html"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of the dashboard, read once from the installed package."""
    folder = resources.files("taskstream.api") / "ui"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[entry.name] = Asset(body, _TYPES[suffix], etag)
    if INDEX not in assets:
        raise FileNotFoundError(f"the dashboard's {INDEX} is not in the installed package "
                                "(package-data in pyproject.toml)")
    return assets


def is_dashboard_path(path: str) -> bool:
    return path == UI_PATH or path.startswith(UI_PATH + "/")


class Dashboard:
    """The handlers of ``/ui`` (the page) and ``/ui/static/{asset}`` (its files)."""

    def __init__(self) -> None:
        self.assets = load_assets()

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._answer(request, INDEX)

    async def slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(UI_PATH)

    async def static(self, request: web.Request, asset: str) -> web.StreamResponse:
        if not _ASSET_NAME.match(asset) or asset not in self.assets:
            raise ApiError(404, "not_found", f"the dashboard has no file {asset!r}")
        return self._answer(request, asset)

    def _answer(self, request: web.Request, name: str) -> web.StreamResponse:
        asset = self.assets[name]
        headers = {**SECURITY_HEADERS, "ETag": asset.etag}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, headers={**headers,
                                                       "Content-Type": asset.content_type})
