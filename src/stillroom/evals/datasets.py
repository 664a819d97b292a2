"""A run's data source -> the items it grades, each with the sample to grade when the source has one.

Item shape of a stored completion (a `stored_completions` source; `{{item.*}}` reaches these):

    {"id": "chatcmpl-…", "created_at": 1730000000, "model": "gpt-4o", "metadata": {"k": "v"},
     "input": [<the request's messages>], "user_text": "<the last user message, as text>",
     "output_text": "<the stored answer>",
     "output_tools": [<its tool calls>]}

Its sample (graded when the run names no model) is the stored answer: `{{sample.output_text}}`,
`{{sample.output_json}}` (the answer parsed, when the request asked for a JSON response_format) and
`{{sample.output_tools}}`, plus OpenAI's sample fields (input, output, finish_reason, model, usage, …).
A `jsonl` source (file content, or a file uploaded with purpose `evals`) gives `{"item": …, "sample"?: …}`
per line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from stillroom.distill.export import Selection, iter_selected
from stillroom.errors import BadRequestError
from stillroom.store.completions import StoredCompletion
from stillroom.store.db import Engine
from stillroom.store.projects import direct_writes
from stillroom.stored import catch_up_search, parse_stored_filter

ReadFile = Callable[[str, str], bytes]  # (project id, file id) -> its bytes (raises NotFoundError)
MAX_ITEMS = 100_000


@dataclass(slots=True)
class Item:
    index: int
    item: dict[str, Any]
    sample: dict[str, Any] | None


def load_items(data_source: dict[str, Any], engine: Engine, project_id: str, read_file: ReadFile) -> list[Item]:
    source = data_source["source"]
    if source["type"] == "stored_completions":
        return stored_completion_items(engine, project_id, source)
    rows = (
        source["content"]
        if source["type"] == "file_content"
        else _read_jsonl(read_file(project_id, source["id"]), source["id"])
    )
    return [_jsonl_item(i, row) for i, row in enumerate(rows)]


def _read_jsonl(data: bytes, file_id: str) -> list[Any]:
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise BadRequestError(f"File {file_id} line {number} is not JSON.", param="data_source.source") from None
    return rows


def _jsonl_item(index: int, row: Any) -> Item:
    if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
        raise BadRequestError(
            f"Data source row {index} must be an object with an 'item' object.", param="data_source.source"
        )
    sample = row.get("sample")
    if sample is not None and not isinstance(sample, dict):
        raise BadRequestError(f"Data source row {index}: 'sample' must be an object.", param="data_source.source")
    if sample is not None:
        sample = {"output_text": "", "output_json": None, "output_tools": [], **sample}
    return Item(index, row["item"], sample)


def stored_completion_items(engine: Engine, project_id: str, source: dict[str, Any]) -> list[Item]:
    """The selection, oldest first: the stored completions list's filters (metadata pairs, model, search,
    created_after/created_before in unix seconds, after inclusive and before exclusive, parsed by the list's
    own code: stillroom.stored), and `limit`; or the completions `ids` names, in that order, that the
    filters also match. Incomplete answers are left out. Read as Distill reads (distill.export)."""
    limit = source.get("limit") or MAX_ITEMS
    chosen = parse_stored_filter(source, "data_source.source.")
    catch_up_search(engine, direct_writes(engine), chosen.search)  # the worker process writes directly
    selection = Selection(chosen, ids=tuple(source.get("ids") or ()))
    items: list[Item] = []
    for row, messages in iter_selected(engine, project_id, selection, incomplete=False):
        if len(items) >= limit:
            break
        items.append(_stored_item(len(items), row, messages))
    return items


def _stored_item(index: int, row: StoredCompletion, messages: list[dict[str, Any]]) -> Item:
    sample = sample_from_completion(row.response, messages, row.request)
    item = {
        "id": row.id,
        "created_at": int(row.response.get("created") or 0),
        "model": row.model,
        "metadata": row.metadata,
        "input": messages,
        "user_text": _last_user_text(messages),
        "output_text": sample["output_text"],
        "output_tools": sample["output_tools"],
    }
    return Item(index, item, sample)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def sample_from_completion(
    completion: dict[str, Any], messages: list[dict[str, Any]], params: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's output-item sample, plus the `output_text` / `output_json` / `output_tools` templates see."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    if not isinstance(text, str):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    tools = message.get("tool_calls") or []
    usage = completion.get("usage") or {}
    return {
        "input": [{"role": m.get("role"), "content": m.get("content")} for m in messages],
        "output": [{"role": "assistant", "content": text}],
        "finish_reason": choice.get("finish_reason") or "",
        "model": completion.get("model") or "",
        "usage": {
            "total_tokens": int(usage.get("total_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "cached_tokens": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        },
        "error": None,
        "temperature": params.get("temperature", 1.0),
        "max_completion_tokens": params.get("max_completion_tokens") or params.get("max_tokens"),
        "top_p": params.get("top_p", 1.0),
        "seed": params.get("seed"),
        "output_text": text,
        "output_json": _output_json(text, params.get("response_format")),
        "output_tools": tools,
    }


def error_sample(messages: list[dict[str, Any]], model: str, code: str, message: str) -> dict[str, Any]:
    """The sample of an item whose sampling failed: OpenAI's shape with `error` set."""
    return {
        "input": messages,
        "output": [],
        "finish_reason": "",
        "model": model,
        "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0},
        "error": {"code": code, "message": message},
        "temperature": None,
        "max_completion_tokens": None,
        "top_p": None,
        "seed": None,
        "output_text": "",
        "output_json": None,
        "output_tools": [],
    }


def _output_json(text: str, response_format: Any) -> Any:
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
