"""parse_chat_request / validate_metadata: what a client may send, and which param an error names."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from stillroom.errors import BadRequestError
from stillroom.wire.chat import MAX_JSON_DEPTH, ChatRequest, parse_chat_request, parse_json_object, validate_metadata

MESSAGES = [{"role": "user", "content": "hi"}]
_DROP = object()  # a field left out of the body


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "gpt-test", "messages": copy.deepcopy(MESSAGES)}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


def raw(value: Any) -> bytes:
    return orjson.dumps(value)


def bad_request(payload: bytes, model: str | None = None) -> BadRequestError:
    with pytest.raises(BadRequestError) as info:
        parse_chat_request(payload, model)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


# --- the body itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"{", b'{"model": "x",}', b"not json", b"\xff\xfe"])
def test_malformed_json_is_a_bad_request_without_param(payload: bytes) -> None:
    error = bad_request(payload)
    assert error.param is None
    assert "parse the JSON body" in error.message


@pytest.mark.parametrize("payload", [b"[]", b"[{}]", b'"text"', b"42", b"null", b"true"])
def test_non_object_body_is_a_bad_request(payload: bytes) -> None:
    error = bad_request(payload)
    assert error.param is None
    assert "JSON object" in error.message


@pytest.mark.parametrize("model", [_DROP, None, "", 42, ["gpt"]])
def test_missing_or_non_string_model_names_model(model: Any) -> None:
    assert bad_request(raw(body(model=model))).param == "model"


# --- messages -------------------------------------------------------------------------------------


def test_missing_messages_names_messages() -> None:
    error = bad_request(raw(body(messages=_DROP)))
    assert error.param == "messages"
    assert "Missing required parameter" in error.message


def test_null_messages_is_treated_as_missing() -> None:
    assert bad_request(raw(body(messages=None))).param == "messages"


def test_empty_messages_array_names_messages() -> None:
    error = bad_request(raw(body(messages=[])))
    assert error.param == "messages"
    assert "empty array" in error.message


@pytest.mark.parametrize("messages", ["hi", {"role": "user", "content": "hi"}, 3])
def test_messages_that_is_not_an_array_names_messages(messages: Any) -> None:
    error = bad_request(raw(body(messages=messages)))
    assert error.param == "messages"
    assert "expected an array" in error.message


def test_message_that_is_not_an_object_names_its_index() -> None:
    error = bad_request(raw(body(messages=[{"role": "user", "content": "a"}, "b"])))
    assert error.param == "messages[1]"


@pytest.mark.parametrize("role", ["robot", "", "USER", None, 1])
def test_unknown_role_names_the_message_role(role: Any) -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": role, "content": "x"}]
    error = bad_request(raw(body(messages=messages)))
    assert error.param == "messages[2].role"


def test_message_without_role_names_the_message_role() -> None:
    assert bad_request(raw(body(messages=[{"content": "x"}]))).param == "messages[0].role"


@pytest.mark.parametrize("content", [1, {"text": "x"}, True, 1.5])
def test_content_of_wrong_type_names_the_message_content(content: Any) -> None:
    error = bad_request(raw(body(messages=[{"role": "user", "content": content}])))
    assert error.param == "messages[0].content"


@pytest.mark.parametrize("role", ["developer", "system", "user", "assistant", "tool", "function"])
def test_every_openai_role_is_accepted(role: str) -> None:
    request = parse_chat_request(raw(body(messages=[{"role": role, "content": "x"}])))
    assert request.body["messages"][0]["role"] == role


@pytest.mark.parametrize(
    "content", [None, "text", [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}]]
)
def test_null_string_and_array_content_are_accepted(content: Any) -> None:
    request = parse_chat_request(raw(body(messages=[{"role": "assistant", "content": content}])))
    assert request.body["messages"][0]["content"] == content


# --- typed fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("temperature", "hot", "expected a number"),
        ("temperature", True, "expected a number"),
        ("temperature", [1], "expected a number"),
        ("top_p", "1", "expected a number"),
        ("frequency_penalty", False, "expected a number"),
        ("presence_penalty", {}, "expected a number"),
        ("n", 1.5, "expected an integer"),
        ("n", "2", "expected an integer"),
        ("n", True, "expected an integer"),
        ("max_tokens", 10.5, "expected an integer"),
        ("max_completion_tokens", "10", "expected an integer"),
        ("top_logprobs", 2.5, "expected an integer"),
        ("seed", "1", "expected an integer"),
        ("stream", "yes", "expected a boolean"),
        ("stream", 1, "expected a boolean"),
        ("store", "true", "expected a boolean"),
        ("logprobs", 0, "expected a boolean"),
        ("parallel_tool_calls", "no", "expected a boolean"),
        ("stream_options", [], "expected an object"),
        ("response_format", "json", "expected an object"),
        ("tools", {"type": "function"}, "expected an array"),
        ("tools", "search", "expected an array"),
        ("tool_choice", ["auto"], "expected a string or an object"),
        ("tool_choice", 1, "expected a string or an object"),
        ("stop", 7, "expected a string or an array"),
        ("logit_bias", [1, 2], "expected an object"),
        ("user", 12, "expected a string"),
        ("service_tier", True, "expected a string"),
    ],
)
def test_field_of_wrong_type_names_the_field(field: str, value: Any, expected: str) -> None:
    error = bad_request(raw(body(**{field: value})))
    assert error.param == field
    assert expected in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("top_p", 1.5),
        ("top_p", -1),
        ("frequency_penalty", -2.5),
        ("presence_penalty", 3),
        ("n", 0),
        ("n", 129),
        ("max_tokens", 0),
        ("max_completion_tokens", -1),
        ("top_logprobs", 21),
        ("top_logprobs", -1),
    ],
)
def test_field_out_of_range_names_the_field(field: str, value: Any) -> None:
    error = bad_request(raw(body(**{field: value})))
    assert error.param == field
    assert "must be between" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", 2),
        ("temperature", 0.7),
        ("top_p", 1),
        ("frequency_penalty", -2),
        ("presence_penalty", 2.0),
        ("n", 1),
        ("n", 128),
        ("max_tokens", 1),
        ("top_logprobs", 0),
        ("top_logprobs", 20),
        ("seed", -(2**63)),
        ("seed", 2**63 - 1),
    ],
)
def test_field_at_its_limits_is_accepted(field: str, value: Any) -> None:
    assert parse_chat_request(raw(body(**{field: value}))).body[field] == value


@pytest.mark.parametrize(
    "field",
    ["temperature", "n", "stream", "tools", "tool_choice", "stop", "user", "metadata", "stream_options", "seed"],
)
def test_explicit_null_fields_are_accepted(field: str) -> None:
    request = parse_chat_request(raw(body(**{field: None})))
    assert request.body[field] is None
    assert request.stream is False


# --- stream, store, stream_options ----------------------------------------------------------------


def test_stream_options_without_stream_names_stream_options() -> None:
    error = bad_request(raw(body(stream_options={"include_usage": True})))
    assert error.param == "stream_options"


def test_stream_options_with_stream_false_names_stream_options() -> None:
    error = bad_request(raw(body(stream=False, stream_options={"include_usage": True})))
    assert error.param == "stream_options"


def test_stream_options_with_stream_true_is_accepted() -> None:
    request = parse_chat_request(raw(body(stream=True, stream_options={"include_usage": True})))
    assert request.stream is True


def test_stream_and_store_default_to_false() -> None:
    request = parse_chat_request(raw(body()))
    assert request.stream is False
    assert request.store is False
    assert request.metadata is None


def test_stream_and_store_flags_are_read() -> None:
    request = parse_chat_request(raw(body(stream=True, store=True)))
    assert request.stream is True
    assert request.store is True


# --- a valid request ------------------------------------------------------------------------------


def test_valid_request_keeps_the_body_untouched() -> None:
    sent = body(
        temperature=0.3,
        top_p=0.9,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        store=True,
        metadata={"team": "search", "run": "7"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        stop=["\n"],
        user="u-1",
        seed=42,
        logit_bias={"50256": -100},
        response_format={"type": "json_object"},
        unknown_vendor_field={"kept": [1, 2, 3]},
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
    )
    snapshot = copy.deepcopy(sent)
    request = parse_chat_request(raw(sent))
    assert isinstance(request, ChatRequest)
    assert request.body == snapshot
    assert request.model == "gpt-test"
    assert request.stream is True
    assert request.store is True
    assert request.metadata == {"team": "search", "run": "7"}


def test_azure_deployment_overrides_the_body_model() -> None:
    request = parse_chat_request(raw(body(model="gpt-from-body")), model="my-deployment")
    assert request.model == "my-deployment"
    assert request.body["model"] == "gpt-from-body"


def test_azure_deployment_makes_the_body_model_optional() -> None:
    request = parse_chat_request(raw(body(model=_DROP)), model="my-deployment")
    assert request.model == "my-deployment"
    assert "model" not in request.body


def test_azure_deployment_still_validates_messages() -> None:
    assert bad_request(raw(body(messages=[])), model="dep").param == "messages"


# --- metadata -------------------------------------------------------------------------------------


def test_metadata_with_sixteen_pairs_at_the_limits_is_accepted() -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}
    assert validate_metadata(metadata) == metadata
    assert parse_chat_request(raw(body(metadata=metadata))).metadata == metadata


def test_metadata_with_seventeen_pairs_names_metadata() -> None:
    metadata = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(BadRequestError) as info:
        validate_metadata(metadata)
    assert info.value.param == "metadata"
    assert "got an object with 17 properties" in info.value.message
    assert bad_request(raw(body(metadata=metadata))).param == "metadata"


def test_metadata_key_of_65_characters_names_the_key() -> None:
    key = "k" * 65
    with pytest.raises(BadRequestError) as info:
        validate_metadata({"ok": "v", key: "v"})
    assert info.value.param == f"metadata.{key}"
    assert "longer than 64" in info.value.message


def test_metadata_value_of_513_characters_names_the_key() -> None:
    with pytest.raises(BadRequestError) as info:
        validate_metadata({"ok": "v", "long": "x" * 513})
    assert info.value.param == "metadata.long"
    assert "length 513" in info.value.message


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"], {"a": "b"}])
def test_metadata_non_string_value_names_the_key(value: Any) -> None:
    with pytest.raises(BadRequestError) as info:
        validate_metadata({"tag": value})
    assert info.value.param == "metadata.tag"
    assert bad_request(raw(body(metadata={"tag": value}))).param == "metadata.tag"


@pytest.mark.parametrize("value", ["tags", ["a", "b"], 3, True])
def test_metadata_that_is_not_an_object_names_metadata(value: Any) -> None:
    with pytest.raises(BadRequestError) as info:
        validate_metadata(value)
    assert info.value.param == "metadata"


def test_metadata_errors_use_the_given_param_name() -> None:
    with pytest.raises(BadRequestError) as info:
        validate_metadata({"k": 1}, param="body.metadata")
    assert info.value.param == "body.metadata.k"
    with pytest.raises(BadRequestError) as info:
        validate_metadata({f"k{i}": "v" for i in range(17)}, param="body.metadata")
    assert info.value.param == "body.metadata"


def test_null_metadata_is_none_and_empty_metadata_is_kept() -> None:
    assert validate_metadata(None) is None
    assert validate_metadata({}) == {}


def test_integral_floats_are_integers_and_forwarded_as_such() -> None:
    """JSON has one number type: 3.0 is a valid integer (schemathesis sends it); 1.5 stays refused."""
    request = parse_chat_request(orjson.dumps(body(n=2.0, seed=315560575.0, max_tokens=3.0)))
    assert (request.body["n"], request.body["seed"], request.body["max_tokens"]) == (2, 315560575, 3)
    assert all(type(request.body[k]) is int for k in ("n", "seed", "max_tokens"))
    with pytest.raises(BadRequestError) as info:
        parse_chat_request(orjson.dumps(body(n=1.5)))
    assert info.value.param == "n"


# --- OpenAI's declared parameters (wire/chat.py CREATE_PARAMS, also the OpenAPI schema) ---------------


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("logit_bias", {"50256": 101}, "logit_bias.50256"),
        ("logit_bias", {"50256": -100.5}, "logit_bias.50256"),
        ("logit_bias", {"50256": "-100"}, "logit_bias.50256"),
        ("logit_bias", {"hello": 1}, "logit_bias"),
        ("stop", [], "stop"),
        ("stop", ["a", "b", "c", "d", "e"], "stop"),
        ("stop", ["a", 1], "stop[1]"),
        ("service_tier", "turbo", "service_tier"),
        ("tool_choice", "sometimes", "tool_choice"),
        ("tools", [{"function": {"name": "f"}}], "tools[0].type"),
        ("tools", [{"type": "browser"}], "tools[0].type"),
        ("response_format", {"type": "yaml"}, "response_format.type"),
        ("response_format", {}, "response_format.type"),
        (
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "n" * 65}},
            "response_format.json_schema.name",
        ),
        ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
        ("safety_identifier", "s" * 65, "safety_identifier"),
        ("prompt_cache_key", 7, "prompt_cache_key"),
    ],
)
def test_declared_parameter_out_of_its_spec_names_the_param(field: str, value: Any, param: str) -> None:
    extra = {"stream": True} if field == "stream_options" else {}
    assert bad_request(raw(body(**{field: value}, **extra))).param == param


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"50256": -100, "11": 100, "7": 0}),
        ("stop", "\n"),
        ("stop", ["a", "b", "c", "d"]),
        *[("service_tier", tier) for tier in ("auto", "default", "flex", "scale", "priority", "fast")],
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}),
        ("logprobs", True),
        ("user", "u-1"),
        ("safety_identifier", "s" * 64),
    ],
)
def test_declared_parameter_within_its_spec_is_accepted(field: str, value: Any) -> None:
    assert parse_chat_request(raw(body(**{field: value}))).body[field] == value


# --- nesting depth --------------------------------------------------------------------------------


DEEP = "@deep@"  # where with_deep() puts the deep value (orjson encodes no more than 255 levels)


def with_deep(levels: int, **fields: Any) -> bytes:
    """A create body with a value `levels` containers deep, {"items": {"items": ... {}}}, in place of DEEP."""
    deep = b'{"items":' * (levels - 1) + b"{}" + b"}" * (levels - 1)
    return raw(body(**fields)).replace(orjson.dumps(DEEP), deep)


def test_a_300_deep_response_format_names_response_format() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "deep", "schema": DEEP}}
    error = bad_request(with_deep(300, response_format=schema))
    assert error.param == "response_format"
    assert error.code == "too_deep"
    assert f"{MAX_JSON_DEPTH} levels" in error.message


def test_a_body_at_the_depth_limit_is_accepted_and_one_more_level_is_not() -> None:
    # the body is level 1 and its fields level 2: a field may nest MAX_JSON_DEPTH - 1 levels
    assert parse_chat_request(with_deep(MAX_JSON_DEPTH - 1, vendor_field=DEEP)).body["vendor_field"]
    assert bad_request(with_deep(MAX_JSON_DEPTH, vendor_field=DEEP)).param == "vendor_field"


def test_deep_message_content_names_messages() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "x", "extra": DEEP}]}]
    assert bad_request(with_deep(200, messages=messages)).param == "messages"


def test_many_shallow_containers_are_not_deep() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": str(i)}]} for i in range(500)]
    assert len(parse_chat_request(raw(body(messages=messages))).body["messages"]) == 500


def test_update_bodies_have_the_same_depth_limit() -> None:
    with pytest.raises(BadRequestError) as info:
        parse_json_object(b'{"metadata": ' + b"[" * 300 + b"]" * 300 + b"}")
    assert info.value.param == "metadata"
