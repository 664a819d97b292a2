"""The published create schema and the server's validation are one: every probe value either passes both or
fails both (the OpenAPI document once allowed `logit_bias: {"1": 500}` and omitted `service_tier`)."""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema_rs
import orjson
import pytest

from stillroom.app import create_app
from stillroom.config import Settings
from stillroom.errors import BadRequestError
from stillroom.wire.chat import CREATE_PARAMS, parse_chat_request

DOCUMENT = create_app(Settings(database_url="sqlite:///:memory:")).openapi()
BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PROBES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    1.5,
    2,
    3.0,
    20,
    21,
    100,
    -100,
    101,
    -101,
    128,
    129,
    2**31,
    2**31 + 1,
    "",
    "x",
    "auto",
    "none",
    "fast",
    "turbo",
    "s" * 65,
    [],
    ["a"],
    ["a", "b", "c", "d"],
    ["a", "b", "c", "d", "e"],
    [1],
    [{"type": "function", "function": {"name": "f"}}],
    [{"name": "f"}],
    {},
    {"1": 5},
    {"1": 101},
    {"1": 1.5},
    {"x": 1},
    {"type": "text"},
    {"type": "json_schema", "json_schema": {"name": "n"}},
    {"type": "json_schema", "json_schema": {}},
    {"type": "yaml"},
    {"include_usage": True},
    {"include_usage": "yes"},
]
FIELDS = [*CREATE_PARAMS, "model", "messages", "metadata"]


def _create_schema(path: str) -> dict[str, Any]:
    schema: dict[str, Any] = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return schema


def _server_accepts(body: dict[str, Any]) -> bool:
    try:
        parse_chat_request(orjson.dumps(body))
    except BadRequestError:
        return False
    return True


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/openai/v1/chat/completions"])
@pytest.mark.parametrize("field", FIELDS)
def test_schema_and_server_agree_on_every_probe(path: str, field: str) -> None:
    validator = jsonschema_rs.Draft202012Validator(_create_schema(path))
    disagreements = []
    for probe, stream in itertools.product(PROBES, [None, True]):
        body = {**BASE, field: probe} | ({"stream": stream} if stream is not None else {})
        if validator.is_valid(body) != _server_accepts(body):
            disagreements.append((probe, stream, validator.is_valid(body)))
    assert not disagreements, f"{field}: (value, stream, schema says valid) where the server differs: {disagreements}"


def test_every_declared_parameter_is_published() -> None:
    properties = _create_schema("/v1/chat/completions")["properties"]
    assert set(CREATE_PARAMS) <= set(properties)
    assert properties["logit_bias"]["additionalProperties"] == {"type": "integer", "minimum": -100, "maximum": 100}
    assert properties["service_tier"]["enum"][:-1] == ["auto", "default", "flex", "scale", "priority", "fast"]


def test_deployment_route_does_not_require_model() -> None:
    assert _create_schema("/openai/deployments/{deployment}/chat/completions")["required"] == ["messages"]
