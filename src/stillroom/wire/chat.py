"""Chat completion requests: parse and validate what clients send, before anything goes upstream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stillroom.errors import BadRequestError
from stillroom.wire.params import Param

ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

MAX_JSON_DEPTH = 64  # nesting levels a body may reach (orjson cannot encode past 255)
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
TOKEN_ID = "^[0-9]+$"

_BOOLEAN = Param(("boolean",), nullable=True)
_STRING = Param(("string",), nullable=True)


def _number(low: float, high: float) -> Param:
    return Param(("number",), nullable=True, minimum=low, maximum=high)


def _integer(low: int, high: int) -> Param:
    return Param(("integer",), nullable=True, minimum=low, maximum=high)


# The typed create parameters (OpenAI's CreateChatCompletionRequest): checked by parse_chat_request and
# published in the OpenAPI document. Anything not declared here is passed upstream untouched.
CREATE_PARAMS: dict[str, Param] = {
    "stream": _BOOLEAN,
    "store": _BOOLEAN,
    "stream_options": Param(
        ("object",),
        nullable=True,
        properties={"include_usage": Param(("boolean",)), "include_obfuscation": Param(("boolean",))},
    ),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "n": _integer(1, 128),
    "max_tokens": _integer(1, 2**31),
    "max_completion_tokens": _integer(1, 2**31),
    "seed": _integer(-(2**63), 2**63 - 1),
    "logprobs": _BOOLEAN,
    "top_logprobs": _integer(0, 20),
    "logit_bias": Param(
        ("object",), nullable=True, key_pattern=TOKEN_ID, values=Param(("integer",), minimum=-100, maximum=100)
    ),
    "stop": Param(("string", "array"), nullable=True, items=Param(("string",)), min_items=1, max_items=4),
    "tools": Param(
        ("array",),
        nullable=True,
        items=Param(
            ("object",), required=("type",), properties={"type": Param(("string",), enum=("function", "custom"))}
        ),
    ),
    "tool_choice": Param(
        nullable=True, variants=(Param(("string",), enum=("none", "auto", "required")), Param(("object",)))
    ),
    "parallel_tool_calls": _BOOLEAN,
    "response_format": Param(
        ("object",),
        nullable=True,
        required=("type",),
        properties={
            "type": Param(("string",), enum=("text", "json_object", "json_schema")),
            "json_schema": Param(
                ("object",), required=("name",), properties={"name": Param(("string",), max_length=64)}
            ),
        },
    ),
    "user": _STRING,
    "safety_identifier": Param(("string",), nullable=True, max_length=64),
    "prompt_cache_key": _STRING,
    "service_tier": Param(("string",), nullable=True, enum=SERVICE_TIERS),
}


@dataclass(slots=True)
class ChatRequest:
    """A validated create request. `body` is the client's JSON object, untouched."""

    body: dict[str, Any]
    model: str
    stream: bool
    store: bool
    metadata: dict[str, str] | None


def parse_chat_request(raw: bytes, model: str | None = None) -> ChatRequest:
    """Parse a create body; `model` is the Azure deployment from the URL, which wins over the body."""
    body = parse_json_object(raw)
    if model is None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("you must provide a model parameter", param="model")
    _check_messages(body.get("messages"))
    _check_fields(body)
    metadata = validate_metadata(body.get("metadata"))
    stream = bool(body.get("stream"))
    if body.get("stream_options") is not None and not stream:
        raise BadRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    return ChatRequest(body=body, model=model, stream=stream, store=bool(body.get("store")), metadata=metadata)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body, nested at most MAX_JSON_DEPTH levels (a deeper one names its top-level key)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("The request body must be a JSON object.")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:  # else it cannot be that deep: skip the walk
        for key, value in body.items():
            if isinstance(value, _CONTAINERS) and _is_deeper(value, MAX_JSON_DEPTH - 2):
                raise BadRequestError(
                    f"Invalid '{key}': nested more than {MAX_JSON_DEPTH} levels deep.", param=key, code="too_deep"
                )
    return body


_CONTAINERS = (dict, list)


def _is_deeper(container: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether a container holds containers nested more than `limit` levels below it (recursion stops there)."""
    if limit < 0:
        return True
    for child in container.values() if type(container) is dict else container:
        if isinstance(child, _CONTAINERS) and _is_deeper(child, limit - 1):
            return True
    return False


def create_request_schema(model_required: bool = True) -> dict[str, Any]:
    """The create body as JSON Schema, from the same declarations and limits parse_chat_request checks."""
    properties: dict[str, Any] = {
        "model": {"type": "string", "minLength": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": sorted(ROLES)},
                    "content": {"type": ["string", "array", "null"]},
                },
            },
        },
        "metadata": {
            "type": ["object", "null"],
            "maxProperties": MAX_METADATA_PAIRS,
            "propertyNames": {"maxLength": MAX_METADATA_KEY},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
        },
    }
    properties.update((name, param.schema()) for name, param in CREATE_PARAMS.items())
    return {
        "type": "object",
        "required": ["model", "messages"] if model_required else ["messages"],
        # stream_options is only allowed with stream: true
        "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
        "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
        "additionalProperties": True,
        "properties": properties,
    }


def validate_metadata(value: Any, param: str = "metadata") -> dict[str, str] | None:
    """OpenAI's metadata limits: at most 16 string pairs, keys <= 64 chars, values <= 512 chars."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequestError(f"Invalid type for '{param}': expected an object.", param=param)
    if len(value) > MAX_METADATA_PAIRS:
        raise BadRequestError(
            f"Invalid '{param}': too many properties. Expected an object with at most {MAX_METADATA_PAIRS} "
            f"properties, but got an object with {len(value)} properties instead.",
            param=param,
        )
    for key, item in value.items():
        if "\x00" in key or (isinstance(item, str) and "\x00" in item):
            raise BadRequestError(f"Invalid '{param}.{key}': NUL characters are not allowed.", param=f"{param}.{key}")
        if len(key) > MAX_METADATA_KEY:
            raise BadRequestError(
                f"Invalid '{param}': key {key[:20]!r}... is longer than {MAX_METADATA_KEY} characters.",
                param=f"{param}.{key}",
            )
        if not isinstance(item, str):
            raise BadRequestError(f"Invalid type for '{param}.{key}': expected a string.", param=f"{param}.{key}")
        if len(item) > MAX_METADATA_VALUE:
            raise BadRequestError(
                f"Invalid '{param}.{key}': string too long. Expected a string with maximum length "
                f"{MAX_METADATA_VALUE}, but got a string with length {len(item)} instead.",
                param=f"{param}.{key}",
            )
    return value


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise BadRequestError("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise BadRequestError("Invalid type for 'messages': expected an array.", param="messages")
    if not messages:
        raise BadRequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", param="messages"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequestError(f"Invalid type for 'messages[{i}]': expected an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequestError(
                f"Invalid value for 'messages[{i}].role': expected one of {', '.join(sorted(ROLES))}.",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequestError(
                f"Invalid type for 'messages[{i}].content': expected a string or an array.",
                param=f"messages[{i}].content",
            )


def _check_fields(body: dict[str, Any]) -> None:
    for name, value in body.items():
        param = CREATE_PARAMS.get(name)
        if param is not None and value is not None:
            body[name] = param.check(value, name)  # the same key: no resizing while iterating
