"""Bad input gets OpenAI's error envelope and status, stores nothing, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from tests.conftest import GATEWAY_KEY, LOCAL_MODEL
from tests.envelope import assert_openai_error
from tests.live import LiveServer

GOOD = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "store": True}


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {GATEWAY_KEY}"}, timeout=30) as c:
        yield c


@pytest.fixture(autouse=True)
def nothing_is_stored(engine: Engine, http: httpx.Client) -> Iterator[None]:
    """Every test here must leave the stored tables as they were, and the server still answering."""
    before = count_rows(engine)
    yield
    assert count_rows(engine) == before
    assert http.get("/v1/models").status_code == 200


def _with(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_with(model=3), "model"),
        ({k: v for k, v in GOOD.items() if k != "model"}, "model"),
        ({k: v for k, v in GOOD.items() if k != "messages"}, "messages"),
        (_with(messages=[]), "messages"),
        (_with(messages="hello"), "messages"),
        (_with(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (_with(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (_with(temperature="hot"), "temperature"),
        (_with(temperature=3), "temperature"),
        (_with(n=0), "n"),
        (_with(n=1.5), "n"),
        (_with(stream="yes"), "stream"),
        (_with(store="yes"), "store"),
        (_with(tools={"type": "function"}), "tools"),
        (_with(stream_options={"include_usage": True}), "stream_options"),
        (_with(metadata=["a"]), "metadata"),
        (_with(metadata={"k": 1}), "metadata.k"),
        (_with(metadata={"k" * 65: "v"}), "metadata." + "k" * 65),
        (_with(metadata={"k": "v" * 513}), "metadata.k"),
        (_with(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ],
)
def test_invalid_create_body_is_a_400_naming_the_param(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, "invalid_request_error", param)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_malformed_json_is_a_400(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "invalid_request_error")


def test_unknown_model_is_a_404_on_both_url_shapes(http: httpx.Client) -> None:
    error = assert_openai_error(
        http.post("/v1/chat/completions", json=_with(model="gpt-nope")), 404, "invalid_request_error", "model"
    )
    assert error["code"] == "model_not_found"
    deployment = http.post("/openai/deployments/nope/chat/completions?api-version=2025-02-01-preview", json=GOOD)
    assert_openai_error(deployment, 404, "invalid_request_error", "model")


def test_oversized_body_is_a_413(http: httpx.Client) -> None:
    big = _with(messages=[{"role": "user", "content": "x" * (300 * 1024)}])
    response = http.post("/v1/chat/completions", json=big)
    assert_openai_error(response, 413, "invalid_request_error")
    chunks = iter([b'{"model": "x", "pad": "', b"y" * 300_000, b'"}'])
    chunked = http.post("/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert_openai_error(chunked, 413, "invalid_request_error")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/chat/completions"),
        ("PATCH", "/v1/chat/completions/chatcmpl-x"),
        ("DELETE", "/v1/chat/completions"),
        ("POST", "/v1/models"),
    ],
)
def test_wrong_method_is_a_405_envelope(http: httpx.Client, method: str, path: str) -> None:
    assert_openai_error(http.request(method, path), 405, "invalid_request_error")


def test_unknown_route_is_a_404_envelope(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing-here"), 404, "invalid_request_error")


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/messages"), ("POST", ""), ("DELETE", "")])
def test_unknown_completion_id_is_a_404(http: httpx.Client, method: str, suffix: str) -> None:
    body = {"metadata": {"a": "b"}} if method == "POST" else None
    response = http.request(method, f"/v1/chat/completions/chatcmpl-doesnotexist{suffix}", json=body)
    assert_openai_error(response, 404, "invalid_request_error", "completion_id")


@pytest.mark.parametrize(
    ("query", "param"),
    [("limit=0", "limit"), ("limit=ten", "limit"), ("order=up", "order")],
)
def test_bad_list_parameters_are_a_400(http: httpx.Client, query: str, param: str) -> None:
    assert_openai_error(http.get(f"/v1/chat/completions?{query}"), 400, "invalid_request_error", param)


def test_metadata_limits_hold_on_update(client: openai.OpenAI, http: httpx.Client, engine: Engine) -> None:
    completion_id = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=1,
        store=True,
        metadata={f"k{i}": "v" for i in range(16)},
    ).id
    before = count_rows(engine)
    path = f"/v1/chat/completions/{completion_id}"
    assert_openai_error(
        http.post(path, json={"metadata": {"extra": "one too many"}}), 400, "invalid_request_error", "metadata"
    )
    assert_openai_error(http.post(path, json={"metadata": {"k0": 7}}), 400, "invalid_request_error", "metadata.k0")
    assert_openai_error(http.post(path, json={}), 400, "invalid_request_error", "metadata")
    assert_openai_error(
        http.post(path, content=b"nope", headers={"content-type": "application/json"}), 400, "invalid_request_error"
    )
    assert count_rows(engine) == before
    assert client.chat.completions.retrieve(completion_id).metadata == {f"k{i}": "v" for i in range(16)}
    client.chat.completions.delete(completion_id)


def test_sdk_raises_typed_errors_with_request_ids(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.retrieve("chatcmpl-missing")
    assert info.value.request_id and info.value.request_id.startswith("req_")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=LOCAL_MODEL, messages=[], store=True)
    assert bad.value.param == "messages"
