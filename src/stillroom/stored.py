"""Stored chat completions as OpenAI's endpoints present them: list, get, messages, update, delete."""

from __future__ import annotations

import math
from typing import Any

from stillroom.errors import BadRequestError, NotFoundError
from stillroom.store import completions as store
from stillroom.store import search
from stillroom.store.db import Engine
from stillroom.store.writer import CommitQueue
from stillroom.wire.chat import validate_metadata
from stillroom.wire.completions import render_store_message, render_stored_completion
from stillroom.wire.pages import render_page

MAX_SEARCH_CHARS = 1000


def parse_search_param(value: Any) -> search.Words | None:
    """`search`: words to find in the messages and answers (stillroom.store.search); blank means none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > MAX_SEARCH_CHARS:
        raise BadRequestError(
            f"Invalid 'search': expected up to {MAX_SEARCH_CHARS} characters of text.", param="search"
        )
    try:
        return search.parse_search(value)
    except search.SearchQueryError as exc:
        raise BadRequestError(str(exc), param="search") from None


def parse_time_param(value: str | None, param: str) -> int | None:
    """`created_after` / `created_before` as given in a query string (unix seconds) -> microseconds."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or seconds > 2**62 / 1_000_000:
        raise BadRequestError(f"Invalid '{param}': expected a unix time in seconds.", param=param)
    return int(seconds * 1_000_000)


def list_stored_completions(
    engine: Engine,
    project_id: str,
    *,
    metadata: dict[str, str],
    model: str | None,
    after: str | None,
    limit: int,
    descending: bool,
    search: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
) -> dict[str, Any]:
    """One page. `search`, `created_after` and `created_before` are Stillroom's own (docs/api.md)."""
    validate_metadata(metadata)
    for param, value in (("after", after), ("model", model)):
        if value is not None and "\x00" in value:
            raise BadRequestError(f"Invalid '{param}': NUL characters are not allowed.", param=param)
    words = parse_search_param(search)
    since = parse_time_param(created_after, "created_after")
    until = parse_time_param(created_before, "created_before")
    try:
        rows, has_more = store.list_completions(
            engine,
            project_id,
            metadata=metadata,
            model=model,
            after=after,
            limit=limit,
            descending=descending,
            search=words,
            created_after=since,
            created_before=until,
        )
    except store.CursorNotFoundError:
        raise BadRequestError(f"Invalid 'after': no chat completion {after!r} was stored.", param="after") from None
    return render_page([_render(row) for row in rows], has_more)


def get_stored_completion(engine: Engine, project_id: str, completion_id: str) -> dict[str, Any]:
    _check_id(completion_id)
    row = store.get_completion(engine, project_id, completion_id)
    if row is None:
        raise _not_found(completion_id)
    return _render(row)


def list_stored_messages(
    engine: Engine, project_id: str, completion_id: str, *, after: str | None, limit: int, descending: bool
) -> dict[str, Any]:
    _check_id(completion_id)
    messages = store.get_messages(engine, project_id, completion_id)
    if messages is None:
        raise _not_found(completion_id)
    items = [render_store_message(completion_id, i, m) for i, m in enumerate(messages)]
    if descending:
        items.reverse()
    if after is not None:
        positions = {item["id"]: n for n, item in enumerate(items)}
        if after not in positions:
            raise BadRequestError(f"Invalid 'after': no message {after!r} in this completion.", param="after")
        items = items[positions[after] + 1 :]
    return render_page(items[:limit], len(items) > limit)


async def update_stored_completion(
    writer: CommitQueue, project_id: str, completion_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Merge the given pairs into the stored metadata (as Azure documents); `null` clears it. Written by the
    process's one writer, like every other write."""
    _check_id(completion_id)
    if "metadata" not in body:
        raise BadRequestError("Missing required parameter: 'metadata'.", param="metadata")
    changes = validate_metadata(body["metadata"])

    def merge(current: dict[str, str]) -> dict[str, str]:
        if changes is None:
            return {}
        merged = {**current, **changes}
        validate_metadata(merged)
        return merged

    row = await writer.write(lambda conn: store.update_metadata(conn, project_id, completion_id, merge))
    if row is None:
        raise _not_found(completion_id)
    return _render(row)


async def delete_stored_completion(writer: CommitQueue, project_id: str, completion_id: str) -> dict[str, Any]:
    _check_id(completion_id)
    if not await writer.write(lambda conn: store.delete_completion(conn, project_id, completion_id)):
        raise _not_found(completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


def _render(row: store.StoredCompletion) -> dict[str, Any]:
    extension = {
        "request_id": row.request_id,
        "provider": row.provider,
        "stream": row.stream,
        "incomplete": row.incomplete,
        "latency_ms": round(row.latency_ms, 3),
    }
    return render_stored_completion(row.id, row.response, row.request, row.metadata, extension)


def _not_found(completion_id: str) -> NotFoundError:
    return NotFoundError(f"No chat completion found with id '{completion_id}'.", param="completion_id")


def _check_id(completion_id: str) -> None:
    """No stored id holds a NUL, and PostgreSQL cannot even compare one: answer 404 before asking."""
    if "\x00" in completion_id:
        raise _not_found(completion_id)
