"""The console's routes: the page with its Content-Security-Policy, assets with ETags, unknown assets as the
OpenAI error envelope, and every asset the page names shipped in the package."""

from __future__ import annotations

import re
from importlib.resources import files

import httpx

from stillroom.web.pages import CSP, Asset, load_assets
from tests.live import LiveServer


def test_page_is_served_without_a_key_under_a_strict_csp(console_server: LiveServer) -> None:
    response = httpx.get(console_server.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "connect-src 'self'" in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="console/app.js">' in response.text


def test_asset_revalidates_with_its_etag(console_server: LiveServer) -> None:
    first = httpx.get(console_server.url + "/console/app.js")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/javascript")
    again = httpx.get(console_server.url + "/console/app.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_unknown_asset_is_a_404_envelope(console_server: LiveServer) -> None:
    response = httpx.get(console_server.url + "/console/../config.py")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(console_server.url + "/console/nope.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "No console asset named 'nope.js'."


def test_every_module_the_scripts_import_ships_in_the_package() -> None:
    page, assets = load_assets()
    named = set(re.findall(r'console/([\w.-]+)"', page.body.decode()))
    for asset in list(assets.values()):
        if asset.media_type.startswith("text/javascript"):
            named |= set(re.findall(r'(?:from |import\(|\[)"\./([\w.-]+)"', asset.body.decode()))
            named |= set(re.findall(r'loadStyles\("([\w.-]+)"\)', asset.body.decode()))
    assert named and named <= set(assets), named - set(assets)
    assert {"distill.js", "jobs.js", "evaluate.js", "runs.js", "studio.css"} <= named


def test_scripts_never_reach_another_origin() -> None:
    """No CDN, no external fonts: nothing in the assets names a scheme-qualified URL to fetch."""
    static = files("stillroom.web") / "static"
    for item in static.iterdir():
        text = item.read_text(encoding="utf-8")
        urls = [u for u in re.findall(r"https?://[^\s\"')]+", text) if u != "http://www.w3.org/2000/svg"]
        assert urls == [], (item.name, urls)


def _cold_load(page: bytes, assets: dict[str, Asset]) -> set[str]:
    """What a first visit fetches: the files the page names and the modules app.js imports statically
    (an `import("./x.js")` on first use is not part of it)."""
    wanted = set(re.findall(r'console/([\w.-]+)"', page.decode()))
    seen: set[str] = set()
    while wanted - seen:
        name = (wanted - seen).pop()
        seen.add(name)
        if name.endswith(".js"):
            wanted |= set(re.findall(r'^import [^;]*? from "\./([\w.-]+)"', assets[name].body.decode(), flags=re.M))
    return seen


def test_a_cold_load_stays_under_100_kb() -> None:
    """The page and every asset it fetches on first load; the wizards, job and run pages load later."""
    page, assets = load_assets()
    cold = _cold_load(page.body, assets)
    assert {"app.js", "completions.js", "console.css"} <= cold
    assert not cold & {"distill.js", "jobs.js", "evaluate.js", "runs.js", "charts.js", "selection.js", "studio.css"}
    assert len(page.body) + sum(len(assets[name].body) for name in cold) < 100_000
