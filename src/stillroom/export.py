"""A selection of stored completions as chat fine-tuning rows, streamed page by page (constant memory)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stillroom.store import completions as store
from stillroom.store.db import Engine

_PAGE = 500


def iter_training_rows(
    engine: Engine, project_id: str, *, metadata: dict[str, str], model: str | None
) -> Iterator[dict[str, Any]]:
    """One `{"messages": [...inputs, assistant answer]}` row per complete stored completion (first choice),
    in list (commit) order. Incomplete completions and answers without content or tool calls are skipped.

    Each page and its messages are read in one snapshot, so a completion deleted while the export runs is
    either exported whole or (if deleted before its page was read) not at all; one committed meanwhile is
    exported on a later page."""
    after: int | None = None
    while True:
        rows, bodies, has_more = store.list_completions_with_messages(
            engine, project_id, metadata=metadata, model=model, after_seq=after, limit=_PAGE
        )
        for row in rows:
            answer = None if row.incomplete else _answer(row.response)
            if answer is not None:
                training: dict[str, Any] = {"messages": [*(bodies[d] for d in row.message_digests), answer]}
                if row.request.get("tools"):
                    training["tools"] = row.request["tools"]
                yield training
        if not has_more or not rows:
            return
        after = rows[-1].seq


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
