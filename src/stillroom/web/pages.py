"""The console's routes: `/` (the one HTML page) and `/console/<asset>` (its scripts, styles and icon).

The assets are read from the package once, when the router is made, and served with an ETag; the page is a
thin client of the public JSON API (it fetches `v1/...` from its own origin with the signed-in key), so these
routes need no principal. A strict Content-Security-Policy allows only the page's own scripts, styles and
same-origin fetches: no CDN, no inline script, nothing from elsewhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from string import Template
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from stillroom import __version__
from stillroom.errors import NotFoundError

ASSET_PREFIX = "/console/"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
_HEADERS = {
    "cache-control": "no-cache",  # revalidated by ETag: a new version is seen at once, an old one costs a 304
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Asset:
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    def response(self, request: Request, headers: dict[str, str] | None = None) -> Response:
        all_headers = {**_HEADERS, "etag": self.etag, **(headers or {})}
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=all_headers)
        return Response(self.body, media_type=self.media_type, headers=all_headers)


def load_assets() -> tuple[Asset, dict[str, Asset]]:
    """The page (its template filled in) and every file under static/, keyed by name."""
    package = files("stillroom.web")
    assets: dict[str, Asset] = {}
    for item in (package / "static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in _TYPES:
            assets[item.name] = Asset.of(item.read_bytes(), _TYPES[suffix])
    template = Template((package / "templates" / "index.html").read_text(encoding="utf-8"))
    page = template.substitute(version=__version__, assets=ASSET_PREFIX.lstrip("/"))
    return Asset.of(page.encode(), "text/html; charset=utf-8"), assets


def console_router() -> APIRouter:
    page, assets = load_assets()
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def get_console(request: Request) -> Response:
        """The console page; everything else is fetched by its scripts."""
        return page.response(request, {"content-security-policy": CSP})

    @router.get(ASSET_PREFIX + "evals/{eval_id}/runs/{run_id}")
    async def get_console_eval_run(eval_id: str, run_id: str) -> Response:
        """An eval run's `report_url`: the console's run page (relative, so it works under a path prefix)."""
        target = f"../../../../#/evals/{quote(eval_id, safe='')}/runs/{quote(run_id, safe='')}"
        return RedirectResponse(target, status_code=303, headers=_HEADERS)

    @router.get(ASSET_PREFIX + "{name}")
    async def get_console_asset(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise NotFoundError(f"No console asset named '{name}'.", param="name")
        return asset.response(request)

    return router
