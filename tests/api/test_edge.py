"""The HTTP edge of an open server (no STILLROOM_API_KEY, the README's default) on a laptop: what a web page in
the user's browser can and cannot make it do, and what the operator sees when a request fails.

A page can send "simple" cross-origin requests without asking (`text/plain`, forms), and through DNS rebinding
can reach 127.0.0.1 under its own host name; neither may run or store anything, or read a stored completion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import Engine

from stillroom.app import create_app
from stillroom.config import Settings
from stillroom.store.completions import count_rows
from stillroom.store.db import make_engine
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream, LiveServer, fake_models_config, start_fake_upstream, start_server

BODY = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "store": True}
UNREACHABLE = '[[models]]\nname = "unreachable"\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    upstream = start_fake_upstream(tmp_path_factory.mktemp("edge-fake") / "fake_upstream.log")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def open_server(open_db_url: str, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No API key: what `stillroom serve` is out of the box."""
    config = fake_models_config(fake.url, {"fake": ("fake", 5.0)}) + "\n" + UNREACHABLE
    live = start_server(tmp_path_factory.mktemp("edge"), open_db_url, config=config, name="edge")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def edge_engine(open_server: LiveServer) -> Iterator[Engine]:
    engine = make_engine(open_server.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def http(open_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=open_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def unchanged(edge_engine: Engine) -> Iterator[None]:
    before = count_rows(edge_engine)
    yield
    assert count_rows(edge_engine) == before


# --- bodies that are not JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
@pytest.mark.usefixtures("unchanged")
def test_a_create_not_sent_as_json_is_a_415_and_runs_nothing(http: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = http.post("/v1/chat/completions", content=httpx.Request("POST", "/", json=BODY).content, headers=headers)
    error = assert_openai_error(response, 415, "invalid_request_error")
    assert error["code"] == "unsupported_media_type"


def test_an_update_not_sent_as_json_is_a_415_and_changes_nothing(open_server: LiveServer, http: httpx.Client) -> None:
    with openai.OpenAI(base_url=open_server.url + "/v1", api_key="unused", max_retries=0) as client:
        created = client.chat.completions.create(
            model="fake", messages=BODY["messages"], store=True, metadata={"a": "1"}
        )
        response = http.post(
            f"/v1/chat/completions/{created.id}",
            content=b'{"metadata": {"a": "2"}}',
            headers={"content-type": "text/plain"},
        )
        assert_openai_error(response, 415, "invalid_request_error")
        assert client.chat.completions.retrieve(created.id).metadata == {"a": "1"}
        client.chat.completions.delete(created.id)


def test_json_with_a_charset_is_json(http: httpx.Client, edge_engine: Engine) -> None:
    before = count_rows(edge_engine)
    response = http.post(
        "/v1/chat/completions",
        content=httpx.Request("POST", "/", json=BODY).content,
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-stillroom-stored"] == "true"
    assert count_rows(edge_engine) != before
    assert http.delete(f"/v1/chat/completions/{response.json()['id']}").status_code == 200


# --- Host: DNS rebinding --------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example"])
@pytest.mark.usefixtures("unchanged")
def test_a_foreign_host_is_refused_on_loopback(http: httpx.Client, host: str) -> None:
    for response in (
        http.get("/v1/chat/completions", headers={"host": host}),
        http.post("/v1/chat/completions", json=BODY, headers={"host": host}),
    ):
        error = assert_openai_error(response, 421, "invalid_request_error")
        assert error["code"] == "host_not_allowed"
        assert "STILLROOM_ALLOWED_HOSTS" in error["message"]


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "LOCALHOST.", "127.0.0.1:9", "127.8.9.10", "[::1]:80", "app.localhost"]
)
def test_loopback_hosts_are_answered(http: httpx.Client, host: str) -> None:
    response = http.get("/v1/chat/completions", headers={"host": host})
    assert response.status_code == 200, response.text


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_is_off_by_default(http: httpx.Client) -> None:
    preflight = http.options(
        "/v1/chat/completions",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert_openai_error(preflight, 405, "invalid_request_error")
    assert not [name for name in preflight.headers if name.startswith("access-control-")]
    simple = http.get("/v1/chat/completions", headers={"origin": "https://evil.example"})
    assert simple.status_code == 200
    assert not [name for name in simple.headers if name.startswith("access-control-")]


# --- deep JSON ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("unchanged")
def test_a_300_deep_body_is_a_400_naming_the_param(http: httpx.Client) -> None:
    deep = b'{"items":' * 299 + b"{}" + b"}" * 299
    schema = b'{"type": "json_schema", "json_schema": {"name": "deep", "schema": ' + deep + b"}}"
    raw = httpx.Request("POST", "/", json={**BODY, "response_format": "@"}).content.replace(b'"@"', schema)
    response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, "invalid_request_error", "response_format")
    assert error["code"] == "too_deep"


# --- what the operator sees -----------------------------------------------------------------------


def test_a_502_is_logged_once_with_its_request_id(open_server: LiveServer, http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={**BODY, "model": "unreachable"})
    assert_openai_error(response, 502, "server_error")
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while request_id not in open_server.log() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the log file: the line is written before the response is sent
    lines = [line for line in open_server.log().splitlines() if request_id in line]
    assert len(lines) == 1, lines
    assert "502" in lines[0] and "127.0.0.1:9" in lines[0]


def test_the_start_up_log_names_the_models_and_the_database(open_server: LiveServer) -> None:
    line = next(line for line in open_server.log().splitlines() if "serving " in line)
    assert "fake (openai at " in line and "unreachable (openai at http://127.0.0.1:9/v1)" in line
    assert f"database {open_server.database_url}" in line


# --- in-process: the configured cases ------------------------------------------------------------


def _in_process(
    tmp_path: Path, requests: list[tuple[str, str, dict[str, str]]], **settings: Any
) -> list[httpx.Response]:
    """Send `requests` (method, path, headers) through create_app(Settings(...)) on 127.0.0.1, in order."""
    config = tmp_path / "models.toml"
    config.write_text(UNREACHABLE)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'edge.db'}", config=config, **settings))

    async def send() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
                return [await client.request(method, path, headers=headers) for method, path, headers in requests]

    return asyncio.run(send())


def test_allowed_hosts_add_names_to_the_loopback_ones(tmp_path: Path) -> None:
    hosts = ["api.example.com", "API.example.com:443", "a.corp.example", "localhost", "evil.example", "corp.example"]
    responses = _in_process(
        tmp_path,
        [("GET", "/v1/models", {"host": host}) for host in hosts],
        allowed_hosts="api.example.com, *.corp.example",
    )
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 421, 421]


def test_allowed_hosts_star_answers_any_host(tmp_path: Path) -> None:
    (response,) = _in_process(tmp_path, [("GET", "/v1/models", {"host": "anything.example"})], allowed_hosts="*")
    assert response.status_code == 200


def test_configured_cors_origins_are_answered_and_others_refused(tmp_path: Path) -> None:
    console = "http://localhost:5173"
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    ok, refused, simple = _in_process(
        tmp_path,
        [
            ("OPTIONS", "/v1/chat/completions", {"origin": console, **preflight}),
            ("OPTIONS", "/v1/chat/completions", {"origin": "https://evil.example", **preflight}),
            ("GET", "/v1/chat/completions", {"origin": console}),
        ],
        cors_origins=f"{console}, https://console.example",
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == console
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    error = assert_openai_error(refused, 400, "invalid_request_error")
    assert error["code"] == "cors_refused"
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == console
    assert "x-request-id" in simple.headers["access-control-expose-headers"]
