"""Chat completion requests: parse and validate what clients send, before anything goes upstream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stillroom.errors import BadRequestError

ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# field -> (accepted python types, lowest, highest); bool is excluded from numbers explicitly below.
_NUMBERS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "frequency_penalty": (-2, 2),
    "presence_penalty": (-2, 2),
}
_INTEGERS: dict[str, tuple[int, int]] = {
    "n": (1, 128),
    "max_tokens": (1, 2**31),
    "max_completion_tokens": (1, 2**31),
    "top_logprobs": (0, 20),
    "seed": (-(2**63), 2**63 - 1),
}
_TYPES: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "store": (bool,),
    "logprobs": (bool,),
    "parallel_tool_calls": (bool,),
    "stream_options": (dict,),
    "response_format": (dict,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "stop": (str, list),
    "logit_bias": (dict,),
    "user": (str,),
    "service_tier": (str,),
}
_TYPE_NAMES = {bool: "a boolean", dict: "an object", list: "an array", str: "a string"}


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
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("The request body must be a JSON object.")
    return body


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
    for name, (low, high) in _NUMBERS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestError(f"Invalid type for '{name}': expected a number.", param=name)
        if not low <= value <= high:
            raise BadRequestError(f"Invalid '{name}': must be between {low} and {high}.", param=name)
    for name, (ilow, ihigh) in _INTEGERS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = body[name] = int(value)  # JSON has one number type: 3.0 is the integer 3
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"Invalid type for '{name}': expected an integer.", param=name)
        if not ilow <= value <= ihigh:
            raise BadRequestError(f"Invalid '{name}': must be between {ilow} and {ihigh}.", param=name)
    for name, types in _TYPES.items():
        value = body.get(name)
        if value is not None and not isinstance(value, types):
            expected = " or ".join(_TYPE_NAMES[t] for t in types)
            raise BadRequestError(f"Invalid type for '{name}': expected {expected}.", param=name)
