"""A selection of stored completions, streamed page by page (constant memory), and each one as a chat
fine-tuning row: the stored request messages plus the stored answer as the assistant turn, with the
request's `tools` and `parallel_tool_calls`. `stillroom export` and dataset building both read through here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from stillroom.store import completions as store
from stillroom.store.db import Engine
from stillroom.stored import StoredFilter, is_selected

_PAGE = 500
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call", "weight")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored completions: those the list's filters match (metadata pairs, model, search, creation
    time range: stillroom.stored.StoredFilter); with `ids`, the completions it names (in that order) that
    the filters also match."""

    filters: StoredFilter = field(default_factory=StoredFilter)
    ids: tuple[str, ...] = ()


def iter_selected(
    engine: Engine, project_id: str, selection: Selection, *, incomplete: bool = True
) -> Iterator[tuple[store.StoredCompletion, list[dict[str, Any]]]]:
    """Every selected completion with its input messages, in commit order (or the order of `ids`);
    `incomplete=False` skips the incomplete ones without reading their messages."""
    chosen = selection.filters
    if selection.ids:
        for completion_id in dict.fromkeys(selection.ids):
            row = store.get_completion(engine, project_id, completion_id)
            if row is None or (row.incomplete and not incomplete) or not is_selected(engine, row, chosen):
                continue
            yield row, store.get_messages(engine, project_id, completion_id) or []
        return
    after_seq: int | None = None
    while True:
        rows, bodies, has_more = store.list_completions_with_messages(
            engine,
            project_id,
            metadata=chosen.metadata,
            model=chosen.model,
            after_seq=after_seq,
            limit=_PAGE,
            search=chosen.search,
            created_after=chosen.created_after,
            created_before=chosen.created_before,
        )
        for row in rows:
            if row.incomplete and not incomplete:
                continue
            if row.incomplete:  # the page loads no bodies for these; few are kept, so fetch them one by one
                yield row, store.get_messages(engine, project_id, row.id) or []
            else:
                yield row, [bodies[d] for d in row.message_digests]
        if not has_more or not rows:
            return
        after_seq = rows[-1].seq


def training_row(row: store.StoredCompletion, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fine-tuning line for one completion (first choice); None when the answer has neither content
    nor tool calls."""
    answer = _answer(row.response)
    if answer is None:
        return None
    training: dict[str, Any] = {"messages": [*(_training_message(m) for m in messages), answer]}
    if row.request.get("tools"):
        training["tools"] = row.request["tools"]
    if row.request.get("parallel_tool_calls") is not None:
        training["parallel_tool_calls"] = row.request["parallel_tool_calls"]
    return training


def iter_training_rows(
    engine: Engine, project_id: str, *, metadata: dict[str, str], model: str | None
) -> Iterator[dict[str, Any]]:
    """One row per complete stored completion with an answer, in commit order (what `stillroom export` writes)."""
    selection = Selection(StoredFilter(metadata=metadata, model=model))
    for row, messages in iter_selected(engine, project_id, selection, incomplete=False):
        if (training := training_row(row, messages)) is not None:
            yield training


def finish_reason(response: dict[str, Any]) -> str | None:
    choices = response.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def _training_message(message: dict[str, Any]) -> dict[str, Any]:
    """Only the keys a fine-tuning line may carry (a stored assistant turn may hold `refusal`, `audio`...)."""
    kept = {k: message[k] for k in _MESSAGE_KEYS if message.get(k) is not None}
    kept.setdefault("content", None if kept.get("tool_calls") or kept.get("function_call") else "")
    return kept


def _answer(response: dict[str, Any]) -> dict[str, Any] | None:
    choices = response.get("choices") or []
    if not choices:
        return None
    message = choices[0].get("message") or {}
    if not message.get("content") and not message.get("tool_calls"):
        return None
    answer: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    return answer
