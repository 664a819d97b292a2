"""Request parameters declared once: `Param.check` validates a value, and `Param.schema` publishes the same
rules as JSON Schema (api/openapi.py), so the OpenAPI document cannot drift from what the server accepts.

A small subset of JSON Schema, enough for OpenAI's create parameters: JSON types, numeric bounds, string
enums and lengths, arrays (items, length), maps (key pattern, values), objects (properties, required) and
unions of those (`variants`). JSON has one number type, so an integral float (3.0) is the integer 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stillroom.errors import BadRequestError

_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "boolean": bool,
    "integer": int,
    "number": (int, float),
    "string": str,
    "array": list,
    "object": dict,
}
_ARTICLES = {
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "an array",
    "object": "an object",
}


@dataclass(frozen=True, slots=True)
class Param:
    types: tuple[str, ...] = ()  # JSON types; empty with `variants`
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    max_length: int | None = None
    items: Param | None = None
    min_items: int | None = None
    max_items: int | None = None
    key_pattern: str | None = None  # an object's keys (a map), e.g. token ids
    values: Param | None = None  # an object's values (a map)
    properties: Mapping[str, Param] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    variants: tuple[Param, ...] = ()  # anyOf: the first variant whose type fits checks the value

    def check(self, value: Any, param: str) -> Any:
        """The value (an integral float made an int), or BadRequestError naming `param`."""
        if value is None and self.nullable:
            return None
        if self.variants:
            for variant in self.variants:
                if variant.fits(value):
                    return variant.check(value, param)
            raise _type_error(param, [t for variant in self.variants for t in variant.types])
        for kind in self.types:
            if _is_type(value, kind):
                break
        else:
            raise _type_error(param, list(self.types))
        if kind == "integer" and isinstance(value, float):
            value = int(value)
        if kind in ("integer", "number"):
            self._check_range(value, param)
        elif kind == "string":
            self._check_string(value, param)
        elif kind == "array":
            return self._check_array(value, param)
        elif kind == "object":
            return self._check_object(value, param)
        return value

    def fits(self, value: Any) -> bool:
        return any(_is_type(value, t) for t in self.types)

    def schema(self) -> dict[str, Any]:
        """This declaration as a JSON Schema (OpenAPI 3.1) object."""
        if self.variants:
            options = [variant.schema() for variant in self.variants]
            return {"anyOf": [*options, {"type": "null"}] if self.nullable else options}
        types = [*self.types, "null"] if self.nullable else list(self.types)
        out: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("maxLength", self.max_length),
            ("minItems", self.min_items),
            ("maxItems", self.max_items),
        ):
            if value is not None:
                out[key] = value
        if self.enum is not None:
            out["enum"] = [*self.enum, None] if self.nullable else list(self.enum)
        if self.items is not None:
            out["items"] = self.items.schema()
        if self.key_pattern is not None:
            out["propertyNames"] = {"pattern": self.key_pattern}
        if self.values is not None:
            out["additionalProperties"] = self.values.schema()
        if self.properties:
            out["properties"] = {name: param.schema() for name, param in self.properties.items()}
        if self.required:
            out["required"] = list(self.required)
        return out

    def _check_range(self, value: float, param: str) -> None:
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadRequestError(f"Invalid '{param}': must be between {low} and {high}.", param=param)

    def _check_string(self, value: str, param: str) -> None:
        if self.enum is not None and value not in self.enum:
            supported = ", ".join(f"'{option}'" for option in self.enum)
            raise BadRequestError(
                f"Invalid value for '{param}': {value[:40]!r}. Supported values are: {supported}.", param=param
            )
        if self.max_length is not None and len(value) > self.max_length:
            raise BadRequestError(
                f"Invalid '{param}': string too long. Expected a string with maximum length {self.max_length}, "
                f"but got a string with length {len(value)} instead.",
                param=param,
            )

    def _check_array(self, value: list[Any], param: str) -> list[Any]:
        if self.min_items is not None and len(value) < self.min_items:
            raise BadRequestError(
                f"Invalid '{param}': array too short. Expected an array with minimum length {self.min_items}, "
                f"but got an array with length {len(value)} instead.",
                param=param,
            )
        if self.max_items is not None and len(value) > self.max_items:
            raise BadRequestError(
                f"Invalid '{param}': array too long. Expected an array with maximum length {self.max_items}, "
                f"but got an array with length {len(value)} instead.",
                param=param,
            )
        if self.items is not None:
            for i, item in enumerate(value):
                value[i] = self.items.check(item, f"{param}[{i}]")
        return value

    def _check_object(self, value: dict[str, Any], param: str) -> dict[str, Any]:
        for name in self.required:
            if value.get(name) is None:
                raise BadRequestError(f"Missing required parameter: '{param}.{name}'.", param=f"{param}.{name}")
        for name, declared in self.properties.items():
            if name in value:
                value[name] = declared.check(value[name], f"{param}.{name}")
        if self.key_pattern is not None:
            for key in value:
                if not re.fullmatch(self.key_pattern, key):
                    raise BadRequestError(f"Invalid key in '{param}': {key[:40]!r}.", param=param)
        if self.values is not None:
            for key, item in value.items():
                value[key] = self.values.check(item, f"{param}.{key}")
        return value


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PYTHON_TYPES[kind])


def _type_error(param: str, types: list[str]) -> BadRequestError:
    expected = " or ".join(_ARTICLES[t] for t in dict.fromkeys(types))
    return BadRequestError(f"Invalid type for '{param}': expected {expected}.", param=param)
