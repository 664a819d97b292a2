"""The Distill request (`POST /fine_tuning/datasets`): which stored completions, and how to make them a
dataset. Every field is optional:

    {"metadata": {"k": "v"}, "model": "...", "search": "refund*", "created_after": 1700000000,
     "created_before": 1800000000, "ids": ["chatcmpl-..."], "limit": 1000, "validation_split": 0.1, "seed": 0,
     "drop_truncated": true, "drop_incomplete": true, "dedupe": true, "last_turn": false,
     "system_prompt": "keep" | "strip" | {"replace": "You are ..."}}

The selection fields (`metadata`, `model`, `search`, `created_after`, `created_before`) are the stored
completions list's, parsed by the same code (stillroom.stored.parse_stored_filter), so a dataset holds what
the list's filter shows; with `ids`, the named completions that also match them.

`last_turn: true` keeps only the last user turn and the answer (and the system prompt, unless it is stripped or
replaced): the few-shot turns a teacher was prompted with are not learnt.
"""

from __future__ import annotations

from typing import Any, Literal

from stillroom.distill.dataset import DatasetOptions
from stillroom.distill.export import Selection
from stillroom.errors import BadRequestError
from stillroom.stored import FILTER_FIELDS, parse_stored_filter

_KNOWN = frozenset(
    (
        *FILTER_FIELDS,
        "ids",
        "limit",
        "validation_split",
        "seed",
        "drop_truncated",
        "drop_incomplete",
        "dedupe",
        "last_turn",
        "system_prompt",
    )
)


def parse_dataset_request(body: dict[str, Any]) -> tuple[Selection, DatasetOptions]:
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise BadRequestError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    ids = body.get("ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) and "\x00" not in i for i in ids):
        raise BadRequestError("Invalid 'ids': expected a list of completion ids.", param="ids")
    selection = Selection(parse_stored_filter(body), ids=tuple(ids))
    mode, replacement = _system_prompt(body.get("system_prompt", "keep"))
    split = body.get("validation_split", 0.0)
    if isinstance(split, bool) or not isinstance(split, int | float):
        raise BadRequestError("Invalid 'validation_split': expected a number.", param="validation_split")
    options = DatasetOptions(
        validation_fraction=float(split),
        drop_truncated=_flag(body, "drop_truncated"),
        drop_incomplete=_flag(body, "drop_incomplete"),
        dedupe=_flag(body, "dedupe"),
        system_prompt=mode,
        replacement=replacement,
        last_turn=_flag(body, "last_turn", default=False),
        seed=_integer(body, "seed") or 0,
        limit=_integer(body, "limit"),
    )
    return selection, options


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError(f"Invalid '{name}': expected a non-negative integer.", param=name)
    return value


def _flag(body: dict[str, Any], name: str, *, default: bool = True) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequestError(f"Invalid type for '{name}': expected a boolean.", param=name)
    return value


def _system_prompt(value: Any) -> tuple[Literal["keep", "strip", "replace"], str | None]:
    if value in ("keep", "strip"):
        return value, None
    if isinstance(value, dict) and set(value) == {"replace"} and isinstance(value["replace"], str) and value["replace"]:
        return "replace", value["replace"]
    raise BadRequestError(
        "Invalid 'system_prompt': expected 'keep', 'strip' or {\"replace\": \"<new prompt>\"}.", param="system_prompt"
    )
