"""The completion store on SQLite and PostgreSQL: save, get, list pages (in commit order) and filters,
content-addressed messages, metadata updates, deletes, and the writer (group commit, failures, health)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from sqlalchemy import Connection, Engine, event, func, select
from sqlalchemy.exc import IntegrityError

from stillroom.store import purge, writer
from stillroom.store.completions import (
    CompletionRecord,
    CursorNotFoundError,
    StoredCompletion,
    delete_completion,
    get_completion,
    get_messages,
    list_completions,
    save_completions,
    storage_usage,
    update_metadata,
)
from stillroom.store.db import make_engine, write_transaction
from stillroom.store.migrate import upgrade_database
from stillroom.store.pages import _rarest_first
from stillroom.store.tables import completion_metadata, completions, message_contents
from stillroom.store.writer import CHECKPOINT_EVERY, CommitQueue
from stillroom.wire.ids import new_completion_id

WAIT = 30.0  # seconds; an upper bound for waits that normally end at once
T = TypeVar("T")


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    """The session's database of this backend, migrated (overrides conftest's server-backed `engine`)."""
    eng = make_engine(db_url)
    upgrade_database(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def project() -> str:
    return f"p-{uuid.uuid4().hex}"


def record(
    project: str,
    messages: list[dict[str, Any]] | None = None,
    *,
    metadata: dict[str, str] | None = None,
    model: str = "gpt-test",
    cid: str | None = None,
    answer: str = "ok",
) -> CompletionRecord:
    cid = cid or new_completion_id()
    return CompletionRecord(
        id=cid,
        project_id=project,
        model=model,
        provider="openai",
        request={"model": model, "temperature": 0.5},
        response={
            "id": cid,
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        },
        messages=messages if messages is not None else [{"role": "user", "content": f"question {cid}"}],
        metadata=metadata or {},
        request_id="req_" + uuid.uuid4().hex,
        stream=False,
        incomplete=False,
        latency_ms=12.5,
    )


def message_size(message: dict[str, Any]) -> int:
    return len(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))


def digest(message: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()


def contents(engine: Engine, project: str) -> dict[str, int]:
    """digest -> refs of every stored message content of a project."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(message_contents.c.digest, message_contents.c.refs).where(message_contents.c.project_id == project)
        ).all()
    return {d: r for d, r in rows}


def count(conn: Connection, table: Any, project: str) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(table.c.project_id == project)).scalar() or 0)


def list_all(engine: Engine, project: str, **kwargs: Any) -> list[StoredCompletion]:
    options: dict[str, Any] = {"metadata": {}, "model": None, "after": None, "limit": 100, "descending": False}
    options.update(kwargs)
    page, _ = list_completions(engine, project, **options)
    return page


def ids(page: list[StoredCompletion]) -> list[str]:
    return [c.id for c in page]


def write(engine: Engine, fn: Callable[..., T], *args: Any) -> T:
    """Run a store write function in its own write transaction (what the writer thread does)."""
    with write_transaction(engine) as conn:
        return fn(conn, *args)


# --- save, get ------------------------------------------------------------------------------------


def test_saved_completion_reads_back_field_for_field(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"team": "search", "run": "1"}, answer="Paris")
    save_completions(engine, [rec])
    stored = get_completion(engine, project, rec.id)
    assert stored is not None
    assert stored.id == rec.id
    assert stored.model == rec.model
    assert stored.provider == "openai"
    assert stored.request == rec.request
    assert stored.response == rec.response
    assert stored.metadata == {"team": "search", "run": "1"}
    assert stored.request_id == rec.request_id
    assert stored.stream is False
    assert stored.incomplete is False
    assert stored.latency_ms == 12.5
    assert stored.message_digests == [digest(m) for m in rec.messages]


def test_stream_and_incomplete_flags_round_trip(engine: Engine, project: str) -> None:
    rec = record(project)
    rec.stream = True
    rec.incomplete = True
    save_completions(engine, [rec])
    stored = get_completion(engine, project, rec.id)
    assert stored is not None
    assert stored.stream is True
    assert stored.incomplete is True


def test_get_completion_of_another_project_is_none(engine: Engine, project: str) -> None:
    rec = record(project)
    save_completions(engine, [rec])
    assert get_completion(engine, project + "-other", rec.id) is None
    assert get_messages(engine, project + "-other", rec.id) is None
    assert get_completion(engine, project, new_completion_id()) is None


def test_a_batch_of_several_completions_is_saved_in_one_call(engine: Engine, project: str) -> None:
    recs = [record(project) for _ in range(5)]
    save_completions(engine, recs)
    assert ids(list_all(engine, project)) == [r.id for r in recs]


def test_a_failing_batch_stores_nothing(engine: Engine, project: str) -> None:
    first = record(project)
    save_completions(engine, [first])
    fresh = record(project, [{"role": "user", "content": "only in the failed batch"}])
    duplicate = record(project, cid=first.id)
    with pytest.raises(IntegrityError):
        save_completions(engine, [fresh, duplicate])
    assert get_completion(engine, project, fresh.id) is None
    assert digest(fresh.messages[0]) not in contents(engine, project)
    assert contents(engine, project) == {digest(first.messages[0]): 1}


def test_get_messages_returns_the_exact_input_messages_in_order(engine: Engine, project: str) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "text", "text": " 6x7?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mul", "arguments": '{"a":6}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "thanks ✓ — ünïcödé", "name": "ann"},
        {"role": "user", "content": "again"},
        {"role": "user", "content": "again"},  # the same message twice
    ]
    rec = record(project, messages)
    save_completions(engine, [rec])
    assert get_messages(engine, project, rec.id) == messages
    assert contents(engine, project)[digest({"role": "user", "content": "again"})] == 2


def test_get_messages_of_a_completion_without_messages_is_empty(engine: Engine, project: str) -> None:
    rec = record(project, [])
    save_completions(engine, [rec])
    assert get_messages(engine, project, rec.id) == []
    assert get_messages(engine, project, new_completion_id()) is None


# --- list: keyset pages ---------------------------------------------------------------------------


def page_through(engine: Engine, project: str, *, descending: bool, between: Any = None) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page, has_more = list_completions(
            engine, project, metadata={}, model=None, after=after, limit=10, descending=descending
        )
        assert len(page) <= 10
        seen.extend(ids(page))
        if not has_more:
            return seen
        assert len(page) == 10
        after = page[-1].id
        if between is not None:
            between()


def test_ascending_pages_cover_every_row_once_in_order(engine: Engine, project: str) -> None:
    recs = [record(project) for _ in range(45)]
    save_completions(engine, recs)
    assert page_through(engine, project, descending=False) == [r.id for r in recs]


def test_descending_pages_cover_every_row_once_newest_first(engine: Engine, project: str) -> None:
    recs = [record(project) for _ in range(45)]
    save_completions(engine, recs)
    assert page_through(engine, project, descending=True) == [r.id for r in reversed(recs)]


def test_last_page_reports_no_more(engine: Engine, project: str) -> None:
    recs = [record(project) for _ in range(20)]
    save_completions(engine, recs)
    page, has_more = list_completions(
        engine, project, metadata={}, model=None, after=recs[9].id, limit=10, descending=False
    )
    assert ids(page) == [r.id for r in recs[10:]]
    assert has_more is False
    page, has_more = list_completions(engine, project, metadata={}, model=None, after=None, limit=19, descending=False)
    assert len(page) == 19
    assert has_more is True


def test_rows_inserted_between_ascending_pages_appear_at_the_end_once(engine: Engine, project: str) -> None:
    recs = [record(project) for _ in range(45)]
    save_completions(engine, recs)
    added: list[str] = []

    def insert_two() -> None:
        if len(added) < 8:
            new = [record(project), record(project)]
            save_completions(engine, new)
            added.extend(r.id for r in new)

    seen = page_through(engine, project, descending=False, between=insert_two)
    assert added  # rows really were inserted mid-way
    assert seen == [r.id for r in recs] + added
    assert len(set(seen)) == len(seen)


def test_rows_inserted_between_descending_pages_never_disturb_the_walk(engine: Engine, project: str) -> None:
    recs = [record(project) for _ in range(45)]
    save_completions(engine, recs)
    added: list[str] = []

    def insert_one() -> None:
        new = record(project)
        save_completions(engine, [new])
        added.append(new.id)

    seen = page_through(engine, project, descending=True, between=insert_one)
    assert len(added) == 4
    assert seen == [r.id for r in reversed(recs)]  # newer rows sort before the cursor: not on later pages


def test_list_is_scoped_to_the_project(engine: Engine, project: str) -> None:
    mine = record(project)
    theirs = record(project + "-other")
    save_completions(engine, [mine, theirs])
    assert ids(list_all(engine, project)) == [mine.id]
    assert ids(list_all(engine, project + "-other")) == [theirs.id]


# --- list: filters --------------------------------------------------------------------------------


@pytest.fixture
def tagged(engine: Engine, project: str) -> dict[str, CompletionRecord]:
    recs = {
        "a": record(project, metadata={"team": "search", "env": "prod"}, model="gpt-a"),
        "b": record(project, metadata={"team": "search", "env": "dev"}, model="gpt-b"),
        "c": record(project, metadata={"team": "ads", "env": "prod"}, model="gpt-a"),
        "d": record(project, metadata={"team": "search"}, model="gpt-a"),
        "e": record(project, metadata={}, model="gpt-a"),
        "f": record(project, metadata={"team": "search", "env": "prod", "x": "1"}, model="gpt-b"),
    }
    save_completions(engine, list(recs.values()))
    return recs


def names(recs: dict[str, CompletionRecord], page: list[StoredCompletion]) -> list[str]:
    by_id = {r.id: name for name, r in recs.items()}
    return [by_id[c.id] for c in page]


def test_metadata_filter_with_one_pair(engine: Engine, project: str, tagged: dict[str, CompletionRecord]) -> None:
    assert names(tagged, list_all(engine, project, metadata={"team": "search"})) == ["a", "b", "d", "f"]
    assert names(tagged, list_all(engine, project, metadata={"env": "prod"})) == ["a", "c", "f"]
    assert list_all(engine, project, metadata={"team": "nobody"}) == []


def test_metadata_filter_with_two_pairs_is_an_and(
    engine: Engine, project: str, tagged: dict[str, CompletionRecord]
) -> None:
    assert names(tagged, list_all(engine, project, metadata={"team": "search", "env": "prod"})) == ["a", "f"]
    assert names(tagged, list_all(engine, project, metadata={"env": "prod", "team": "search"})) == ["a", "f"]
    assert list_all(engine, project, metadata={"team": "ads", "env": "dev"}) == []


def test_model_filter(engine: Engine, project: str, tagged: dict[str, CompletionRecord]) -> None:
    assert names(tagged, list_all(engine, project, model="gpt-a")) == ["a", "c", "d", "e"]
    assert names(tagged, list_all(engine, project, model="gpt-b")) == ["b", "f"]
    assert list_all(engine, project, model="gpt-z") == []


def test_model_filter_matches_the_configured_name_or_the_stored_objects_own(engine: Engine, project: str) -> None:
    relayed = record(project, model="relay")
    relayed.response["model"] = "smol-135m"  # the upstream answered with its own name
    direct = record(project, model="smol-135m")  # both names the same: listed once
    other = record(project, model="other")
    relayed_again = record(project, model="relay", metadata={"env": "prod"})
    relayed_again.response["model"] = "smol-135m"
    save_completions(engine, [relayed, direct, other, relayed_again])
    every = [relayed.id, direct.id, relayed_again.id]
    assert ids(list_all(engine, project, model="smol-135m")) == every
    assert ids(list_all(engine, project, model="smol-135m", descending=True)) == every[::-1]
    assert ids(list_all(engine, project, model="relay")) == [relayed.id, relayed_again.id]
    assert ids(list_all(engine, project, model="smol-135m", metadata={"env": "prod"})) == [relayed_again.id]
    for descending in (False, True):  # pages of one, walking both names: each completion once, in order
        walked: list[str] = []
        after = None
        while True:
            page, more = list_completions(
                engine, project, metadata={}, model="smol-135m", after=after, limit=1, descending=descending
            )
            walked += ids(page)
            if not more:
                break
            after = page[-1].id
        assert walked == (every[::-1] if descending else every)
    # Delete by filter (and its dry run) matches the same two names as the list.
    assert purge.count_completions(engine, project, purge.CompletionFilter(model="smol-135m")) == 3
    assert purge.count_completions(engine, project, purge.CompletionFilter(model="relay")) == 2
    prod = purge.CompletionFilter(metadata=(("env", "prod"),), model="smol-135m")
    with write_transaction(engine) as conn:
        assert purge.delete_completions_batch(conn, project, prod, 10) == 1
    assert ids(list_all(engine, project, model="smol-135m")) == [relayed.id, direct.id]


def test_metadata_and_model_filters_combine(engine: Engine, project: str, tagged: dict[str, CompletionRecord]) -> None:
    assert names(tagged, list_all(engine, project, metadata={"team": "search"}, model="gpt-b")) == ["b", "f"]
    both = list_all(engine, project, metadata={"team": "search", "env": "prod"}, model="gpt-a")
    assert names(tagged, both) == ["a"]
    assert names(tagged, list_all(engine, project, metadata={"env": "prod"}, model="gpt-a", descending=True)) == [
        "c",
        "a",
    ]


def test_metadata_filter_does_not_see_other_projects(engine: Engine, project: str) -> None:
    mine = record(project, metadata={"tag": "shared"})
    theirs = record(project + "-other", metadata={"tag": "shared"})
    save_completions(engine, [mine, theirs])
    assert ids(list_all(engine, project, metadata={"tag": "shared"})) == [mine.id]


def test_filtered_pages_cover_every_match_once(engine: Engine, project: str) -> None:
    recs = [record(project, metadata={"k": "yes" if i % 3 else "no"}, model="m") for i in range(45)]
    save_completions(engine, recs)
    expected = [r.id for r in recs if r.metadata["k"] == "yes"]
    for descending in (False, True):
        seen: list[str] = []
        after = None
        while True:
            page, more = list_completions(
                engine, project, metadata={"k": "yes"}, model="m", after=after, limit=7, descending=descending
            )
            seen.extend(ids(page))
            if not more:
                break
            after = page[-1].id
        assert seen == (list(reversed(expected)) if descending else expected)


# --- content addressing, storage usage, deletes ----------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}
TURN_1 = {"role": "user", "content": "Tell me about the Loire valley. " * 10}
REPLY_1 = {"role": "assistant", "content": "The Loire valley is known for its châteaux. " * 10}
TURN_2 = {"role": "user", "content": "And its wines?"}


def test_shared_message_prefix_is_stored_once(engine: Engine, project: str) -> None:
    first = record(project, [SYSTEM, TURN_1])
    second = record(project, [SYSTEM, TURN_1, REPLY_1, TURN_2])
    save_completions(engine, [first])
    save_completions(engine, [second])
    assert contents(engine, project) == {digest(SYSTEM): 2, digest(TURN_1): 2, digest(REPLY_1): 1, digest(TURN_2): 1}
    assert get_messages(engine, project, first.id) == [SYSTEM, TURN_1]
    assert get_messages(engine, project, second.id) == [SYSTEM, TURN_1, REPLY_1, TURN_2]


def test_shared_messages_in_one_batch_are_stored_once(engine: Engine, project: str) -> None:
    save_completions(engine, [record(project, [SYSTEM, TURN_1]), record(project, [SYSTEM, TURN_1, REPLY_1])])
    assert contents(engine, project) == {digest(SYSTEM): 2, digest(TURN_1): 2, digest(REPLY_1): 1}


def test_same_message_in_two_projects_is_stored_per_project(engine: Engine, project: str) -> None:
    other = project + "-other"
    save_completions(engine, [record(project, [SYSTEM]), record(other, [SYSTEM])])
    assert contents(engine, project) == {digest(SYSTEM): 1}
    assert contents(engine, other) == {digest(SYSTEM): 1}


def test_storage_usage_counts_shared_messages_once(engine: Engine, project: str) -> None:
    first = record(project, [SYSTEM, TURN_1])
    second = record(project, [SYSTEM, TURN_1, REPLY_1, TURN_2])
    save_completions(engine, [first])
    after_first = storage_usage(engine)[project]
    save_completions(engine, [second])
    after_second = storage_usage(engine)[project]
    with engine.connect() as conn:
        row_bytes = dict(
            conn.execute(
                select(completions.c.id, completions.c.stored_bytes).where(completions.c.project_id == project)
            ).all()
        )
    assert after_first == row_bytes[first.id] + message_size(SYSTEM) + message_size(TURN_1)
    growth = after_second - after_first
    naive_growth = row_bytes[second.id] + sum(message_size(m) for m in second.messages)
    assert growth == row_bytes[second.id] + message_size(REPLY_1) + message_size(TURN_2)
    assert growth < naive_growth
    assert naive_growth - growth == message_size(SYSTEM) + message_size(TURN_1)


def test_stored_bytes_counts_utf8_bytes_like_message_sizes(engine: Engine, project: str) -> None:
    rec = record(project, [TURN_2], metadata={"note": "naïve café ✓"}, answer="日本語の答え — ünïcödé")
    save_completions(engine, [rec])
    with engine.connect() as conn:
        row = conn.execute(select(completions).where(completions.c.id == rec.id)).one()
    texts = (row.request, row.response, row.metadata, row.message_digests)
    assert row.stored_bytes == sum(len(t.encode()) for t in texts)
    assert storage_usage(engine)[project] == row.stored_bytes + message_size(TURN_2)
    write(engine, update_metadata, project, rec.id, lambda current: {"note": "日本語"})
    with engine.connect() as conn:
        row = conn.execute(select(completions).where(completions.c.id == rec.id)).one()
    texts = (row.request, row.response, row.metadata, row.message_digests)
    assert row.stored_bytes == sum(len(t.encode()) for t in texts)


def test_storage_usage_is_per_project(engine: Engine, project: str) -> None:
    other = project + "-other"
    save_completions(engine, [record(project, [SYSTEM])])
    usage = storage_usage(engine)
    assert usage[project] > message_size(SYSTEM)
    assert other not in usage


def test_delete_frees_unshared_contents_and_keeps_shared_ones(engine: Engine, project: str) -> None:
    first = record(project, [SYSTEM, TURN_1])
    second = record(project, [SYSTEM, TURN_1, REPLY_1, TURN_2])
    save_completions(engine, [first, second])
    assert write(engine, delete_completion, project, second.id) is True
    assert contents(engine, project) == {digest(SYSTEM): 1, digest(TURN_1): 1}
    assert get_completion(engine, project, second.id) is None
    assert get_messages(engine, project, second.id) is None
    assert get_messages(engine, project, first.id) == [SYSTEM, TURN_1]


def test_delete_of_the_older_completion_keeps_the_shared_prefix(engine: Engine, project: str) -> None:
    first = record(project, [SYSTEM, TURN_1])
    second = record(project, [SYSTEM, TURN_1, REPLY_1, TURN_2])
    save_completions(engine, [first, second])
    assert write(engine, delete_completion, project, first.id) is True
    assert contents(engine, project) == {digest(m): 1 for m in second.messages}
    assert get_messages(engine, project, second.id) == second.messages


def test_delete_releases_a_message_repeated_within_one_completion(engine: Engine, project: str) -> None:
    again = {"role": "user", "content": "again"}
    one = record(project, [again, again, again])
    two = record(project, [again])
    save_completions(engine, [one, two])
    assert contents(engine, project) == {digest(again): 4}
    write(engine, delete_completion, project, one.id)
    assert contents(engine, project) == {digest(again): 1}
    write(engine, delete_completion, project, two.id)
    assert contents(engine, project) == {}


def test_deleting_every_completion_leaves_no_contents_or_metadata(engine: Engine, project: str) -> None:
    histories = [[SYSTEM], [SYSTEM, TURN_1], [SYSTEM, TURN_1, REPLY_1], [SYSTEM, TURN_1, REPLY_1, TURN_2], [TURN_2]]
    recs = [record(project, h, metadata={"n": str(i)}) for i, h in enumerate(histories)]
    save_completions(engine, recs[:2])
    save_completions(engine, recs[2:])
    for rec in reversed(recs):
        assert write(engine, delete_completion, project, rec.id) is True
    with engine.connect() as conn:
        assert count(conn, message_contents, project) == 0
        assert count(conn, completions, project) == 0
        assert count(conn, completion_metadata, project) == 0
    assert project not in storage_usage(engine)


def test_delete_in_one_project_keeps_the_same_message_in_another(engine: Engine, project: str) -> None:
    other = project + "-other"
    mine = record(project, [SYSTEM])
    theirs = record(other, [SYSTEM])
    save_completions(engine, [mine, theirs])
    write(engine, delete_completion, project, mine.id)
    assert contents(engine, project) == {}
    assert contents(engine, other) == {digest(SYSTEM): 1}
    assert get_messages(engine, other, theirs.id) == [SYSTEM]


def test_delete_of_a_missing_or_foreign_completion_is_false_and_changes_nothing(engine: Engine, project: str) -> None:
    rec = record(project, [SYSTEM])
    save_completions(engine, [rec])
    assert write(engine, delete_completion, project, new_completion_id()) is False
    assert write(engine, delete_completion, project + "-other", rec.id) is False
    assert get_completion(engine, project, rec.id) is not None
    assert contents(engine, project) == {digest(SYSTEM): 1}


def test_delete_removes_the_completion_from_metadata_filters(engine: Engine, project: str) -> None:
    keep = record(project, metadata={"k": "v"})
    drop = record(project, metadata={"k": "v"})
    save_completions(engine, [keep, drop])
    write(engine, delete_completion, project, drop.id)
    assert ids(list_all(engine, project, metadata={"k": "v"})) == [keep.id]


# --- update_metadata ------------------------------------------------------------------------------


def test_update_metadata_stores_what_merge_returns(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"keep": "1", "change": "old", "drop": "x"})
    save_completions(engine, [rec])
    seen: list[dict[str, str]] = []

    def merge(current: dict[str, str]) -> dict[str, str]:
        seen.append(dict(current))
        merged = {**current, "change": "new", "added": "yes"}
        del merged["drop"]
        return merged

    updated = write(engine, update_metadata, project, rec.id, merge)
    assert seen == [{"keep": "1", "change": "old", "drop": "x"}]
    assert updated is not None
    assert updated.metadata == {"keep": "1", "change": "new", "added": "yes"}
    assert updated.id == rec.id
    assert updated.response == rec.response
    stored = get_completion(engine, project, rec.id)
    assert stored is not None
    assert stored.metadata == {"keep": "1", "change": "new", "added": "yes"}


def test_update_metadata_reindexes_the_filters(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"stage": "draft", "gone": "soon"})
    save_completions(engine, [rec])
    write(engine, update_metadata, project, rec.id, lambda current: {"stage": "final"})
    assert list_all(engine, project, metadata={"stage": "draft"}) == []
    assert list_all(engine, project, metadata={"gone": "soon"}) == []
    assert ids(list_all(engine, project, metadata={"stage": "final"})) == [rec.id]


def test_update_metadata_to_empty_clears_the_filters(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"a": "1"})
    save_completions(engine, [rec])
    updated = write(engine, update_metadata, project, rec.id, lambda current: {})
    assert updated is not None
    assert updated.metadata == {}
    assert list_all(engine, project, metadata={"a": "1"}) == []
    with engine.connect() as conn:
        assert count(conn, completion_metadata, project) == 0


def test_update_metadata_adjusts_storage_usage_by_the_size_change(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"a": "1"})
    save_completions(engine, [rec])
    before = storage_usage(engine)[project]
    write(engine, update_metadata, project, rec.id, lambda current: {"a": "1", "b": "x" * 100})
    after = storage_usage(engine)[project]
    assert after - before == len(orjson.dumps({"a": "1", "b": "x" * 100})) - len(orjson.dumps({"a": "1"}))


def test_update_metadata_of_a_missing_completion_is_none_without_calling_merge(engine: Engine, project: str) -> None:
    calls: list[dict[str, str]] = []

    def merge(current: dict[str, str]) -> dict[str, str]:
        calls.append(current)
        return current

    assert write(engine, update_metadata, project, new_completion_id(), merge) is None
    assert calls == []


def test_update_metadata_merge_that_raises_changes_nothing(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"a": "1"})
    save_completions(engine, [rec])

    def refuse(current: dict[str, str]) -> dict[str, str]:
        raise ValueError("too many pairs")

    with pytest.raises(ValueError, match="too many pairs"):
        write(engine, update_metadata, project, rec.id, refuse)
    stored = get_completion(engine, project, rec.id)
    assert stored is not None
    assert stored.metadata == {"a": "1"}
    assert ids(list_all(engine, project, metadata={"a": "1"})) == [rec.id]


def test_update_metadata_of_another_projects_completion_is_none(engine: Engine, project: str) -> None:
    rec = record(project, metadata={"a": "1"})
    save_completions(engine, [rec])
    assert write(engine, update_metadata, project + "-other", rec.id, lambda c: {"a": "2"}) is None
    stored = get_completion(engine, project, rec.id)
    assert stored is not None
    assert stored.metadata == {"a": "1"}


# --- CommitQueue ----------------------------------------------------------------------------------


class GatedEngine:
    """Holds the writer thread inside its first batch until `open()`: whatever is submitted meanwhile
    queues up, so the batches that follow are known in advance. Counts the batches attempted."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.entered = threading.Event()
        self._gate = threading.Event()
        self.dialect = engine.dialect
        self.attempts = 0

    def raw_connection(self) -> Any:
        self.attempts += 1
        self.entered.set()
        assert self._gate.wait(WAIT), "gate never opened"
        return self._engine.raw_connection()

    def connect(self) -> Connection:
        return self._engine.connect()

    def open(self) -> None:
        self._gate.set()


@pytest.fixture
def gated(engine: Engine) -> GatedEngine:
    return GatedEngine(engine)


@pytest.fixture
def held_queue(gated: GatedEngine) -> Iterator[CommitQueue]:
    queue = CommitQueue(gated, batch_size=16)  # type: ignore[arg-type]
    yield queue
    gated.open()
    queue.close()


def hold(queue: CommitQueue, gated: GatedEngine, project: str) -> tuple[CompletionRecord, Future[None]]:
    """Submit one record and wait until the commit thread is stuck writing it."""
    first = record(project)
    future = queue.submit(first)
    assert gated.entered.wait(WAIT)
    return first, future


def test_commit_queue_commits_records_submitted_from_many_threads(engine: Engine, project: str) -> None:
    queue = CommitQueue(engine, batch_size=32)
    per_thread = 50
    futures: list[list[tuple[str, Future[None]]]] = [[] for _ in range(6)]
    start = threading.Barrier(len(futures))

    def submit_many(out: list[tuple[str, Future[None]]]) -> None:
        start.wait(WAIT)
        for _ in range(per_thread):
            rec = record(project)
            out.append((rec.id, queue.submit(rec)))

    threads = [threading.Thread(target=submit_many, args=(out,)) for out in futures]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        submitted = [pair for out in futures for pair in out]
        assert len(submitted) == 6 * per_thread
        for _, future in submitted:
            assert future.result(WAIT) is None
    finally:
        queue.close()
    assert queue.committed == 6 * per_thread
    assert queue.failed == 0
    assert 1 <= queue.batches <= queue.committed
    assert sorted(ids(list_all(engine, project, limit=1000))) == sorted(cid for cid, _ in submitted)


def test_commit_queue_groups_waiting_records_into_batches(
    engine: Engine, project: str, gated: GatedEngine, held_queue: CommitQueue
) -> None:
    _, first_future = hold(held_queue, gated, project)
    futures: list[Future[None]] = []
    lock = threading.Lock()

    def submit_many() -> None:
        for _ in range(25):
            future = held_queue.submit(record(project))
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    gated.open()
    first_future.result(WAIT)
    for future in futures:
        future.result(WAIT)
    assert held_queue.committed == 101
    # The held record alone, then the 100 that queued up meanwhile, at most 16 to a batch.
    assert held_queue.batches == 1 + math.ceil(100 / 16)
    assert len(list_all(engine, project, limit=1000)) == 101


def test_a_failing_record_fails_alone_and_the_rest_of_its_batch_commits(
    engine: Engine, project: str, gated: GatedEngine, held_queue: CommitQueue
) -> None:
    first, first_future = hold(held_queue, gated, project)
    good_before = record(project, [SYSTEM, TURN_1])
    duplicate = record(project, [SYSTEM, {"role": "user", "content": "only the duplicate has this"}], cid=first.id)
    good_after = record(project, [SYSTEM, TURN_2])
    futures = [held_queue.submit(r) for r in (good_before, duplicate, good_after)]
    gated.open()
    first_future.result(WAIT)
    assert futures[0].result(WAIT) is None
    with pytest.raises(IntegrityError):
        futures[1].result(WAIT)
    assert futures[2].result(WAIT) is None
    assert held_queue.committed == 3
    assert held_queue.failed == 1
    assert ids(list_all(engine, project)) == [first.id, good_before.id, good_after.id]
    stored_first = get_completion(engine, project, first.id)
    assert stored_first is not None
    assert stored_first.request_id == first.request_id  # the duplicate did not overwrite it
    # The duplicate's message references were rolled back with it.
    assert contents(engine, project) == {
        digest(first.messages[0]): 1,
        digest(SYSTEM): 2,
        digest(TURN_1): 1,
        digest(TURN_2): 1,
    }


def test_close_writes_everything_already_queued(engine: Engine, project: str) -> None:
    queue = CommitQueue(engine, batch_size=8)
    recs = [record(project) for _ in range(40)]
    futures = [queue.submit(r) for r in recs]
    queue.close(WAIT)
    assert all(f.done() and f.exception() is None for f in futures)
    assert queue.committed == 40
    assert ids(list_all(engine, project)) == [r.id for r in recs]


def test_a_cancelled_wait_does_not_stop_the_commit_thread(
    engine: Engine, project: str, gated: GatedEngine, held_queue: CommitQueue
) -> None:
    """A caller that gives up waiting (asyncio.wait_for over wrap_future cancels the future) must not
    kill the writer: the record is still stored and later records still commit."""
    _, first_future = hold(held_queue, gated, project)
    abandoned = record(project)
    abandoned_future = held_queue.submit(abandoned)
    assert abandoned_future.cancel()
    gated.open()
    first_future.result(WAIT)
    later = record(project)
    assert held_queue.submit(later).result(WAIT) is None
    assert get_completion(engine, project, abandoned.id) is not None
    assert get_completion(engine, project, later.id) is not None
    assert held_queue.committed == 3


def test_a_cancelled_wait_on_a_failing_record_does_not_stop_the_commit_thread(
    engine: Engine, project: str, gated: GatedEngine, held_queue: CommitQueue
) -> None:
    first, first_future = hold(held_queue, gated, project)
    duplicate_future = held_queue.submit(record(project, cid=first.id))
    assert duplicate_future.cancel()
    gated.open()
    first_future.result(WAIT)
    later = record(project)
    assert held_queue.submit(later).result(WAIT) is None
    assert held_queue.failed == 1
    assert held_queue.committed == 2


def test_commits_waiting_together_share_one_batch(
    engine: Engine, project: str, gated: GatedEngine, held_queue: CommitQueue
) -> None:
    """Completions that arrive while a batch is being written are committed together in the next one, and
    every waiter resumes once its row is in the database."""
    first, first_future = hold(held_queue, gated, project)
    recs = [record(project) for _ in range(15)]

    async def main() -> None:
        waits = [asyncio.ensure_future(held_queue.commit(r, timeout=WAIT)) for r in recs]
        await asyncio.sleep(0)  # every commit is queued before the writer is let go
        gated.open()
        await asyncio.gather(*waits)
        assert ids(list_all(engine, project)) == [first.id] + [r.id for r in recs]

    asyncio.run(main())
    first_future.result(WAIT)
    assert (held_queue.batches, held_queue.committed, held_queue.failed) == (2, 16, 0)


def test_a_commit_waiting_on_the_database_leaves_the_event_loop_free(
    engine: Engine, project: str, gated: GatedEngine, held_queue: CommitQueue
) -> None:
    """The database work (pool checkout, BEGIN IMMEDIATE, serialising) happens on the writer thread: while
    it is stuck, the loop keeps running everything else. (When SQLite committed inline, on the loop, the
    loop itself was stuck in the write.)"""
    rec = record(project)

    async def main() -> None:
        commit = asyncio.ensure_future(held_queue.commit(rec, timeout=WAIT))
        await asyncio.to_thread(gated.entered.wait, WAIT)  # the writer is inside the write now
        for _ in range(100):
            await asyncio.sleep(0)  # the loop turns: nothing on it waits for the database
        assert not commit.done()
        gated.open()
        await commit

    asyncio.run(main())
    assert get_completion(engine, project, rec.id) is not None


def test_a_failure_reaches_only_its_caller(engine: Engine, project: str) -> None:
    queue = CommitQueue(engine)
    first = record(project)
    save_completions(engine, [first])
    duplicate, fresh = record(project, cid=first.id), record(project)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(
            queue.commit(duplicate, timeout=WAIT), queue.commit(fresh, timeout=WAIT), return_exceptions=True
        )

    outcomes = asyncio.run(main())
    queue.close()
    assert isinstance(outcomes[0], IntegrityError) and outcomes[1] is None
    assert get_completion(engine, project, fresh.id) is not None
    assert (queue.committed, queue.failed) == (1, 1)
    assert not queue.is_degraded()  # one bad record is not a failing database


def test_enqueue_stores_without_a_waiter_and_close_flushes(engine: Engine, project: str) -> None:
    queue = CommitQueue(engine)
    recs = [record(project) for _ in range(3)]

    async def main() -> None:
        for r in recs:
            queue.enqueue(r)
        queue.close()  # e.g. shutdown before the writer got round to them

    asyncio.run(main())
    assert ids(list_all(engine, project)) == [r.id for r in recs]


def test_the_rarest_metadata_pair_drives_a_two_pair_filter(engine: Engine, project: str) -> None:
    """A common pair first (alphabetically) and a rare one: the rare pair must lead, or a page would walk
    every completion carrying the common one."""
    recs = [record(project, metadata={"app": "main", "user": "u1" if i % 10 == 0 else f"x{i}"}) for i in range(60)]
    save_completions(engine, recs)
    with engine.connect() as conn:
        assert _rarest_first(conn, project, {"app": "main", "user": "u1"}) == [("user", "u1"), ("app", "main")]
        assert _rarest_first(conn, project, {"app": "main", "user": "nobody"}) is None
    assert ids(list_all(engine, project, metadata={"app": "main", "user": "u1"})) == [r.id for r in recs[::10]]
    assert list_all(engine, project, metadata={"app": "main", "user": "nobody"}) == []


def test_the_wal_stays_bounded_while_completions_keep_coming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite only (the WAL is SQLite's): auto-checkpoints are off, so the writer must checkpoint, or the
    log would grow with every commit. Completions keep arriving while the checkpoint thread copies the log
    back, as under steady load; SQLite reuses the log only once every frame in it has been copied back, so
    without the writer's own pass after that copy the log grew by every commit's pages, without bound (25x
    here). On a busy machine the low-priority thread may lag, by `CHECKPOINT_LATE` periods at most."""
    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 20)
    periods = 3 * writer.CHECKPOINT_LATE
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    upgrade_database(engine)
    queue = CommitQueue(engine)
    wal = tmp_path / "wal.db-wal"
    sizes = []

    async def main() -> None:
        for _ in range(periods):
            for _ in range(writer.CHECKPOINT_EVERY):
                await queue.commit(record("wal"), timeout=WAIT)
            sizes.append(wal.stat().st_size)

    asyncio.run(main())
    queue.close()
    engine.dispose()
    assert queue.committed == periods * writer.CHECKPOINT_EVERY
    assert sizes[-1] <= sizes[0] * (writer.CHECKPOINT_LATE + 2), sizes


def test_the_writer_waits_for_a_checkpoint_the_thread_has_not_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint thread that gets no CPU (other processes keep the machine busy; here it is held) must not
    let the log grow for as long as that lasts: after `CHECKPOINT_LATE` periods the writer waits for it,
    and the next checkpoint starts on time."""
    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 10)
    engine = make_engine(f"sqlite:///{tmp_path / 'late.db'}")
    upgrade_database(engine)
    queue = CommitQueue(engine)
    release = threading.Event()
    finished: list[int] = []  # batches committed when each checkpoint was done
    run_checkpoint = queue._run_checkpoint

    def held_checkpoint() -> bool:
        if not finished:
            release.wait(WAIT)
        done = run_checkpoint()
        finished.append(queue.batches)
        return done

    queue._run_checkpoint = held_checkpoint  # type: ignore[method-assign]
    threading.Timer(2.0, release.set).start()
    late = writer.CHECKPOINT_LATE * writer.CHECKPOINT_EVERY

    async def main() -> None:
        for _ in range(late + 3 * writer.CHECKPOINT_EVERY):
            await queue.commit(record("late"), timeout=WAIT)

    try:
        asyncio.run(main())
    finally:
        release.set()
        queue.close()
        engine.dispose()
    # No batch was committed between the period that made the held checkpoint late and its end, and the
    # checkpoints went on after it.
    assert finished[0] <= writer.CHECKPOINT_EVERY + late, finished
    assert len(finished) >= 3, finished


def test_a_batch_is_answered_before_the_index_step_that_precedes_a_checkpoint(tmp_path: Path) -> None:
    """The batch that makes a checkpoint due is followed by an index step (SQLite) on the writer thread;
    its caller must have its answer already, not wait for the step. The step is held here until the
    caller has been answered, which never happens if the answer waits for it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'step.db'}")
    upgrade_database(engine)
    queue = CommitQueue(engine)
    answered = threading.Event()
    steps: list[bool] = []
    index = queue._index

    def held_index() -> bool:
        steps.append(answered.wait(5.0))
        return index()

    queue._index = held_index  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(CHECKPOINT_EVERY):
            await queue.commit(record("step"), timeout=WAIT)
        answered.set()

    try:
        asyncio.run(main())
    finally:
        answered.set()
        queue.close()
        engine.dispose()
    assert steps and steps[0], steps  # the first step began before the last caller was answered, and waited


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_the_checkpoint_thread_runs_at_nice_19(tmp_path: Path) -> None:
    """The checkpoint's copy and its fsyncs take little of the core from the event loop and the writer,
    and the rest of the process keeps its priority."""
    engine = make_engine(f"sqlite:///{tmp_path / 'nice.db'}")
    queue = CommitQueue(engine)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    try:
        nice = queue._checkpoints.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert nice.result(WAIT) == 19
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    finally:
        queue.close()
        engine.dispose()


# --- the commit sequence: list order is commit order ---------------------------------------------


def test_a_completion_committed_after_a_cursor_passed_it_is_on_a_later_page(engine: Engine, project: str) -> None:
    """A stream's id is minted when it starts and its row committed when it ends: a short call made during
    it has a later id but is committed first. A consumer paging with `after` must still see both, once."""
    stream = record(project)  # id minted first
    short = record(project)
    assert stream.id < short.id
    save_completions(engine, [short])
    first_page = list_all(engine, project)
    assert ids(first_page) == [short.id]
    save_completions(engine, [stream])  # the stream ends
    assert ids(list_all(engine, project, after=first_page[-1].id)) == [stream.id]
    assert ids(list_all(engine, project)) == [short.id, stream.id]  # commit order, not id order
    assert ids(list_all(engine, project, descending=True)) == [stream.id, short.id]
    assert ids(list_all(engine, project, after=stream.id, descending=True)) == [short.id]


def test_a_deleted_cursor_resumes_exactly_where_it_was(engine: Engine, project: str) -> None:
    stream, short, later = record(project), record(project), record(project)
    save_completions(engine, [short])
    save_completions(engine, [stream])
    save_completions(engine, [later])
    assert write(engine, delete_completion, project, short.id) is True
    # Neither "the next id" nor "the greatest row before it by id" would do: the stream has a smaller id.
    assert ids(list_all(engine, project, after=short.id)) == [stream.id, later.id]
    assert ids(list_all(engine, project, after=later.id, descending=True)) == [stream.id]


def test_an_unknown_cursor_is_refused(engine: Engine, project: str) -> None:
    theirs = record(project + "-other")
    save_completions(engine, [theirs])
    with pytest.raises(CursorNotFoundError):
        list_all(engine, project, after=new_completion_id())
    with pytest.raises(CursorNotFoundError):
        list_all(engine, project, after=theirs.id)  # another project's id names nothing here


def test_filtered_pages_follow_commit_order_and_updates_keep_the_place(engine: Engine, project: str) -> None:
    stream, short = record(project, metadata={"k": "v"}), record(project, metadata={"k": "v"})
    save_completions(engine, [short])
    save_completions(engine, [stream])
    write(engine, update_metadata, project, short.id, lambda current: {**current, "extra": "1"})
    for model in (None, "gpt-test"):
        assert ids(list_all(engine, project, metadata={"k": "v"}, model=model)) == [short.id, stream.id]
        assert ids(list_all(engine, project, metadata={"k": "v"}, model=model, after=short.id)) == [stream.id]
    assert ids(list_all(engine, project, metadata={"k": "v", "extra": "1"})) == [short.id]
    assert ids(list_all(engine, project, model="gpt-test", after=short.id)) == [stream.id]


def test_concurrent_writers_are_numbered_in_commit_order(db_url: str, project: str) -> None:
    """Two writers (as two `serve` processes would be, each with its own engine) commit at once while a
    consumer pages with `after`: the consumer sees every completion exactly once."""
    engines = [make_engine(db_url) for _ in range(2)]
    queues = [CommitQueue(e, batch_size=4) for e in engines]
    total = 200
    done = threading.Event()
    seen: list[str] = []

    def produce(queue: CommitQueue, n: int) -> None:
        futures = [queue.submit(record(project)) for _ in range(n)]
        for future in futures:
            future.result(WAIT)

    def consume() -> None:
        after = None
        while True:
            finished = done.is_set()
            page, more = list_completions(
                engines[0], project, metadata={}, model=None, after=after, limit=7, descending=False
            )
            seen.extend(ids(page))
            if page:
                after = page[-1].id
            if finished and not more and not page:
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(q, total // 2)) for q in queues]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(WAIT)
    done.set()
    consumer.join(WAIT)
    for queue, eng in zip(queues, engines, strict=True):
        queue.close()
        eng.dispose()
    assert len(seen) == total
    assert len(set(seen)) == total


def test_milliseconds_created_is_stored_as_sent(engine: Engine, project: str) -> None:
    """Some upstreams send `created` in milliseconds: a 32-bit column made every store fail on PostgreSQL."""
    rec = record(project)
    rec.response["created"] = 1_700_000_000_123
    save_completions(engine, [rec])
    stored = get_completion(engine, project, rec.id)
    assert stored is not None and stored.response["created"] == 1_700_000_000_123
    with engine.connect() as conn:
        assert conn.execute(select(completions.c.created).where(completions.c.id == rec.id)).scalar() == (
            1_700_000_000_123
        )


def test_created_that_is_not_a_64_bit_integer_is_kept_in_the_response_only(engine: Engine, project: str) -> None:
    odd = [record(project) for _ in range(3)]
    for rec, created in zip(odd, [2**64 - 1, "1700000000", 1.7e9], strict=True):
        rec.response["created"] = created
    save_completions(engine, odd)
    with engine.connect() as conn:
        columns = dict(
            conn.execute(
                select(completions.c.id, completions.c.created).where(completions.c.project_id == project)
            ).all()
        )
    assert [columns[r.id] for r in odd] == [0, 0, 1_700_000_000]
    stored = get_completion(engine, project, odd[0].id)
    assert stored is not None and stored.response["created"] == 2**64 - 1


# --- snapshot reads --------------------------------------------------------------------------------


@contextlib.contextmanager
def delete_before_bodies_are_read(engine: Engine, project: str, victim: str) -> Iterator[list[bool]]:
    """Delete `victim` (on another connection, committed) just before the first read of message bodies:
    the moment a reader that is not one snapshot would find the bodies gone."""
    fired: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and "FROM message_contents" in statement:
            fired.append(True)
            write(engine, delete_completion, project, victim)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield fired
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_messages_read_while_the_completion_is_deleted_come_from_one_snapshot(engine: Engine, project: str) -> None:
    rec = record(project, [SYSTEM, {"role": "user", "content": f"only here {project}"}])
    save_completions(engine, [rec])
    with delete_before_bodies_are_read(engine, project, rec.id) as fired:
        messages = get_messages(engine, project, rec.id)
    assert fired  # the delete did land between the two reads
    assert messages == rec.messages  # the whole answer of the snapshot (before the delete), not a KeyError
    assert get_messages(engine, project, rec.id) is None  # and afterwards: gone, cleanly
