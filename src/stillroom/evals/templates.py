"""`{{item.*}}` and `{{sample.*}}` templates, as OpenAI's graders guide writes them.

Only the `item` and `sample` namespaces exist; dots reach into objects and digits into arrays
(`{{item.input.0.content}}`). A string that is nothing but one reference keeps the referenced value's type
(`resolve_reference`); references inside longer text are rendered as text, non-strings as compact JSON.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from stillroom.errors import BadRequestError

_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][\w.\-]*)\s*\}\}")
NAMESPACES = ("item", "sample")


class MissingReferenceError(LookupError):
    """A template names a path the item or sample does not have."""


def lookup(path: str, context: dict[str, Any]) -> Any:
    """The value at a dotted path such as `item.answer` or `sample.output_text`."""
    head, *rest = path.split(".")
    if head not in NAMESPACES:
        raise MissingReferenceError(f"unknown namespace {head!r} in {{{{{path}}}}} (use item or sample)")
    if head not in context or context[head] is None:
        raise MissingReferenceError(f"{{{{{path}}}}}: there is no {head} here")
    value: Any = context[head]
    for part in rest:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isascii() and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise MissingReferenceError(f"{{{{{path}}}}}: no {part!r} in {head}")
    return value


def render(template: str, context: dict[str, Any]) -> str:
    """Replace every `{{path}}` with its value, as text."""
    return _REFERENCE.sub(lambda m: _as_text(lookup(m.group(1), context)), template)


def resolve_reference(reference: str, context: dict[str, Any]) -> Any:
    """`item.input` or `{{item.input}}`: the value itself, with its type."""
    match = _REFERENCE.fullmatch(reference.strip())
    return lookup(match.group(1) if match else reference.strip(), context)


def check_template(template: str, param: str) -> None:
    """Refuse references outside the two namespaces when a grader or run is created."""
    for match in _REFERENCE.finditer(template):
        namespace = match.group(1).split(".")[0]
        if namespace not in NAMESPACES:
            raise BadRequestError(
                f"Invalid template {{{{{match.group(1)}}}}}: only item.* and sample.* can be referenced.", param=param
            )


def uses_sample(template: str) -> bool:
    return any(m.group(1).split(".")[0] == "sample" for m in _REFERENCE.finditer(template))


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()
