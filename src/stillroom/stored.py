"""Stored chat completions as OpenAI's endpoints present them: list, get, messages, update, delete."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stillroom.errors import BadRequestError, NotFoundError
from stillroom.store import completions as store
from stillroom.store import search, search_tail
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.store.search import Words
from stillroom.store.timeline import id_micros
from stillroom.store.writer import CommitQueue
from stillroom.wire.chat import validate_metadata
from stillroom.wire.completions import render_store_message, render_stored_completion
from stillroom.wire.pages import render_page

MAX_SEARCH_CHARS = 1000
FILTER_FIELDS = ("metadata", "model", "search", "created_after", "created_before")


@dataclass(frozen=True, slots=True)
class StoredFilter:
    """Which stored completions, as the list filters them (docs/api.md): every metadata pair, a model (the
    configured name or the stored object's own), every word of a full-text search, and a creation time
    range in µs, [created_after, created_before). Declared once: the list, bulk delete, Distill datasets and
    eval `stored_completions` sources all take these fields and parse them with `parse_stored_filter`."""

    metadata: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    search: Words | None = None
    created_after: int | None = None
    created_before: int | None = None

    def is_empty(self) -> bool:
        return not self.metadata and self.model is None and self.search is None and self.time_range == (None, None)

    @property
    def time_range(self) -> tuple[int | None, int | None]:
        return self.created_after, self.created_before

    def matches_row(self, row: store.StoredCompletion) -> bool:
        """Whether a loaded row passes every filter but the search (which only the index can answer)."""
        since, until = self.time_range
        created = id_micros(row.id)
        return (
            (self.model is None or self.model in (row.model, row.response.get("model")))
            and all(row.metadata.get(k) == v for k, v in self.metadata.items())
            and (since is None or created >= since)
            and (until is None or created < until)
        )


def parse_stored_filter(values: Mapping[str, Any], prefix: str = "") -> StoredFilter:
    """The filter fields of a list's query (strings) or of a JSON body (`created_*` as numbers): `metadata`
    (an object of pairs), `model`, `search`, `created_after`, `created_before` (unix seconds). `prefix` names
    where they sit in a body (`data_source.source.`), for the error's `param`."""
    model = values.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequestError(f"Invalid '{prefix}model': expected a string.", param=f"{prefix}model")
    if model is not None and "\x00" in model:
        raise BadRequestError(f"Invalid '{prefix}model': NUL characters are not allowed.", param=f"{prefix}model")
    return StoredFilter(
        metadata=validate_metadata(values.get("metadata"), f"{prefix}metadata") or {},
        model=model,
        search=parse_search_param(values.get("search"), f"{prefix}search"),
        created_after=parse_time_param(values.get("created_after"), f"{prefix}created_after"),
        created_before=parse_time_param(values.get("created_before"), f"{prefix}created_before"),
    )


def parse_search_param(value: Any, param: str = "search") -> Words | None:
    """`search`: words to find in the messages and answers (stillroom.store.search); blank means none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > MAX_SEARCH_CHARS:
        raise BadRequestError(f"Invalid '{param}': expected up to {MAX_SEARCH_CHARS} characters of text.", param=param)
    try:
        return search.parse_search(value)
    except search.SearchQueryError as exc:
        raise BadRequestError(str(exc), param=param) from None


def parse_time_param(value: Any, param: str) -> int | None:
    """`created_after` / `created_before`, unix seconds as a query string gives them or as a JSON number ->
    microseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        seconds = math.nan
    else:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or seconds > 2**62 / 1_000_000:
        raise BadRequestError(f"Invalid '{param}': expected a unix time in seconds.", param=param)
    return int(seconds * 1_000_000)


def catch_up_search(engine: Engine, writes: Writes, words: Words | None) -> None:
    """Before a search reads: SQLite indexes completions just after their commit (store.search_tail), so a
    search first indexes everything committed so far, to answer with all of it. A write (through `writes`);
    nothing without a search, nor on PostgreSQL (it indexes inside the commit)."""
    if words is not None and engine.dialect.name == "sqlite":
        writes(search_tail.catch_up)


def is_selected(engine: Engine, row: store.StoredCompletion, selection: StoredFilter) -> bool:
    """Whether a row loaded by id (a selection's `ids`) is one the filter matches, its search included."""
    if not selection.matches_row(row):
        return False
    return selection.search is None or search.has_words(engine, row.seq, selection.search)


def list_stored_completions(
    engine: Engine,
    writes: Writes,
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
    if after is not None and "\x00" in after:
        raise BadRequestError("Invalid 'after': NUL characters are not allowed.", param="after")
    selection = parse_stored_filter(
        {
            "metadata": metadata,
            "model": model,
            "search": search,
            "created_after": created_after,
            "created_before": created_before,
        }
    )
    catch_up_search(engine, writes, selection.search)
    try:
        rows, has_more = store.list_completions(
            engine,
            project_id,
            metadata=selection.metadata,
            model=selection.model,
            after=after,
            limit=limit,
            descending=descending,
            search=selection.search,
            created_after=selection.created_after,
            created_before=selection.created_before,
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
