"""Full-text search and time ranges on stored completions (stillroom.store.search, stillroom.store.timeline),
on SQLite and PostgreSQL: what is found, combined with the other filters and keyset pages, and the index
kept in step by every delete path."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stillroom.store import purge, search_tail, writer
from stillroom.store.completions import CompletionRecord, delete_completion, list_completions, save_completions
from stillroom.store.db import make_engine, raw_write_transaction, write_transaction
from stillroom.store.migrate import upgrade_database
from stillroom.store.projects import create_project
from stillroom.store.search import document_text, fts5_query, parse_search, search_terms, tsquery
from stillroom.store.timeline import id_micros
from stillroom.store.writer import CommitQueue
from stillroom.wire.ids import _base62, completion_id_floor, new_completion_id

HOUR = 3_600_000_000  # µs


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade_database(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def project() -> str:
    return f"p-{uuid.uuid4().hex}"


def at(micros: int) -> str:
    """A completion id minted at `micros`."""
    return "chatcmpl-" + _base62(micros, 9) + uuid.uuid4().hex[:20]


def record(project: str, question: str, answer: str = "ok", *, cid: str | None = None, **meta: str) -> CompletionRecord:
    cid = cid or new_completion_id()
    return CompletionRecord(
        id=cid,
        project_id=project,
        model=meta.pop("model", "gpt-test"),
        provider="openai",
        request={},
        response={"id": cid, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        metadata=meta,
        request_id="req_1",
        stream=False,
        incomplete=False,
        latency_ms=1.0,
    )


def found(engine: Engine, project: str, **kwargs: Any) -> list[str]:
    options: dict[str, Any] = {"metadata": {}, "model": None, "after": None, "limit": 100, "descending": False}
    options.update(kwargs)
    if isinstance(options.get("search"), str):
        options["search"] = parse_search(options["search"])
    rows, _ = list_completions(engine, project, **options)
    return [r.id for r in rows]


def raw_matches(engine: Engine, word: str) -> int:
    """Rows of the index itself (not joined to completions) that hold `word`."""
    words = parse_search(word)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql, q = "SELECT count(*) FROM completion_search WHERE completion_search MATCH :q", fts5_query(words)
        else:
            sql, q = "SELECT count(*) FROM completion_search WHERE document @@ to_tsquery('simple', :q)", tsquery(words)
        return int(conn.execute(text(sql), {"q": q}).scalar() or 0)


# --- terms and documents ----------------------------------------------------------------------------


def test_terms_fold_case_and_accents_and_split_on_punctuation() -> None:
    assert search_terms("Crème BRÛLÉE, don't; gpt-4.1_mini") == ["creme", "brulee", "don", "t", "gpt", "4", "1", "mini"]
    assert search_terms("x" * 65 + " kept") == ["kept"]


def test_document_holds_the_turn_its_tool_calls_and_the_answer() -> None:
    doc = document_text(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Earlier question"},
            {"role": "assistant", "content": "Earlier answer"},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}, {"type": "image_url"}]},
        ],
        {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": "Rainy.",
                        "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
                    }
                }
            ]
        },
    )
    assert doc.split() == ["weather", "in", "oslo", "rainy", "get", "weather", "city", "oslo"]


def test_query_words_become_phrases_and_prefixes() -> None:
    words = parse_search("Don't  refun*")
    assert fts5_query(words) == '"don t" AND "refun" *'
    assert tsquery(words) == "('don' <-> 't') & ('refun':*)"
    with pytest.raises(ValueError):
        parse_search(" -- ! ")


# --- search -------------------------------------------------------------------------------------------


def test_search_finds_words_in_messages_and_in_answers(engine: Engine, project: str) -> None:
    a, b, c = (
        record(project, "How do I reset my password?", "Open settings."),
        record(project, "Where is my parcel?", "It ships tomorrow with the password slip."),
        record(project, "Hello", "Hi!"),
    )
    save_completions(engine, [a, b, c])
    assert found(engine, project, search="password") == [a.id, b.id]
    assert found(engine, project, search="PASSWORD settings") == [a.id]
    assert found(engine, project, search="ship*") == [b.id]
    assert found(engine, project, search="ship") == []
    assert found(engine, project, search="brief") == []  # system messages are not indexed
    assert found(engine, project + "-other", search="password") == []


def test_search_combines_with_metadata_model_and_keyset_pages(engine: Engine, project: str) -> None:
    recs = [
        record(project, f"refund request {i}", tier="gold" if i % 2 else "free", model="m1" if i < 4 else "m2")
        for i in range(6)
    ]
    save_completions(engine, [*recs, record(project, "unrelated", tier="gold")])
    ids = [r.id for r in recs]
    assert found(engine, project, search="refund", metadata={"tier": "gold"}) == ids[1::2]
    assert found(engine, project, search="refund", model="m2") == ids[4:]
    assert found(engine, project, search="refund", model="m1", metadata={"tier": "gold"}) == [ids[1], ids[3]]
    pages, after = [], None
    while True:
        rows, more = list_completions(
            engine,
            project,
            metadata={},
            model=None,
            after=after,
            limit=2,
            descending=True,
            search=parse_search("refund"),
        )
        pages.append([r.id for r in rows])
        if not more:
            break
        after = rows[-1].id
    assert pages == [ids[5:3:-1], ids[3:1:-1], ids[1::-1]]


# --- time ranges ----------------------------------------------------------------------------------------


def test_time_range_keeps_ids_in_range_in_commit_order(engine: Engine, project: str) -> None:
    base = id_micros(new_completion_id()) - 10 * HOUR
    early, middle, late = (record(project, "q", cid=at(base + n * HOUR)) for n in (0, 2, 4))
    save_completions(engine, [early])
    save_completions(engine, [late])
    save_completions(engine, [middle])  # started before `late`, committed after it: a slow stream
    assert found(engine, project) == [early.id, late.id, middle.id]
    assert found(engine, project, created_after=base + HOUR) == [late.id, middle.id]
    assert found(engine, project, created_before=base + 3 * HOUR) == [early.id, middle.id]
    assert found(engine, project, created_after=base + HOUR, created_before=base + 3 * HOUR) == [middle.id]
    assert found(engine, project, created_after=base + HOUR, descending=True) == [middle.id, late.id]
    assert found(engine, project, created_after=base + 5 * HOUR) == []
    assert found(engine, project, created_before=base) == []


def test_time_range_combines_with_search_metadata_and_cursor(engine: Engine, project: str) -> None:
    base = id_micros(new_completion_id()) - 100 * HOUR
    recs = [record(project, f"invoice {n}", cid=at(base + n * HOUR), kind="a" if n % 2 else "b") for n in range(8)]
    save_completions(engine, recs)
    ids = [r.id for r in recs]
    window = {"created_after": base + 2 * HOUR, "created_before": base + 6 * HOUR}
    assert found(engine, project, search="invoice", **window) == ids[2:6]
    assert found(engine, project, metadata={"kind": "a"}, **window) == [ids[3], ids[5]]
    assert found(engine, project, search="invoice", after=ids[3], **window) == ids[4:6]
    assert found(engine, project, search="invoice", after=ids[4], descending=True, **window) == ids[3:1:-1]


def test_lag_records_the_slowest_commit(engine: Engine, project: str) -> None:
    now = id_micros(new_completion_id())
    save_completions(engine, [record(project, "q")])
    save_completions(engine, [record(project, "q", cid=at(now - 50 * HOUR))])
    with engine.connect() as conn:
        lag = conn.execute(text("SELECT lag FROM sequences WHERE name = 'completions'")).scalar()
    assert lag is not None and lag >= 50 * HOUR


# --- the index follows every delete ------------------------------------------------------------------------


def test_single_delete_takes_the_completion_out_of_the_index(engine: Engine, project: str) -> None:
    word = "zq" + uuid.uuid4().hex[:10]
    gone, kept = record(project, f"{word} one"), record(project, f"{word} two")
    save_completions(engine, [gone, kept])
    with write_transaction(engine) as conn:
        assert delete_completion(conn, project, gone.id)
    assert raw_matches(engine, word) == 1
    assert found(engine, project, search=word) == [kept.id]


def test_delete_by_filter_and_by_search_unindex_what_they_delete(engine: Engine, project: str) -> None:
    word = "zq" + uuid.uuid4().hex[:10]
    recs = [record(project, f"{word} {i}", colour="red" if i < 3 else "blue") for i in range(5)]
    save_completions(engine, recs)
    selection = purge.CompletionFilter(metadata=(("colour", "red"),))
    assert purge.count_completions(engine, project, selection) == 3
    with write_transaction(engine) as conn:
        assert purge.delete_completions_batch(conn, project, selection, 2) == 2
    with write_transaction(engine) as conn:
        assert purge.delete_completions_batch(conn, project, selection, 2) == 1
    assert raw_matches(engine, word) == 2
    by_search = purge.CompletionFilter(search=parse_search(f"{word} 4"))
    assert purge.count_completions(engine, project, by_search) == 1
    with write_transaction(engine) as conn:
        assert purge.delete_completions_batch(conn, project, by_search, 10) == 1
    assert found(engine, project, search=word) == [recs[3].id]
    assert raw_matches(engine, word) == 1


def test_deleting_a_project_empties_its_part_of_the_index(engine: Engine, project: str) -> None:
    word = "zq" + uuid.uuid4().hex[:10]
    save_completions(engine, [record(project, word) for _ in range(3)])
    with write_transaction(engine) as conn:
        create_project(conn, project, project, 0, 10**9)
    with write_transaction(engine) as conn:
        assert purge.delete_project(conn, project) is not None
    assert raw_matches(engine, word) == 0


def test_time_bounds_match_the_id_floor() -> None:
    micros = id_micros(new_completion_id())
    assert completion_id_floor(micros) <= at(micros) < completion_id_floor(micros + 1)
    assert id_micros(at(micros)) == micros


def test_search_and_metadata_give_the_same_rows_whichever_is_rarer(engine: Engine, project: str) -> None:
    rare = "zq" + uuid.uuid4().hex[:10]
    recs = [
        record(project, f"common words {rare if i in (3, 7) else ''}", team="x" if i % 4 else "y") for i in range(12)
    ]
    save_completions(engine, recs)
    ids = [r.id for r in recs]
    # The word is rarer than team=x (2 vs 9 rows): the index drives; team=y is rarer than "common": the pair does.
    assert found(engine, project, search=rare, metadata={"team": "x"}) == [ids[3], ids[7]]
    assert found(engine, project, search="common", metadata={"team": "y"}) == ids[0::4]
    assert found(engine, project, search=f"{rare} common", metadata={"team": "x"}, descending=True) == [ids[7], ids[3]]


# --- SQLite indexes after the commit (stillroom.store.search_tail) --------------------------------------


def _deferred(engine: Engine, records: list[CompletionRecord]) -> dict[int, str]:
    """Store as the writer does on SQLite: committed, the documents kept for a later index step."""
    documents: dict[int, str] = {}
    save_completions(engine, records, documents=documents)
    return documents


def _index_step(engine: Engine, documents: dict[int, str], limit: int = search_tail.INDEX_LIMIT) -> tuple[int, int]:
    with raw_write_transaction(engine) as cursor:
        return search_tail.index_pending(cursor, documents, limit)


def _integrity_check(engine: Engine) -> None:
    """FTS5's own check of the contentless index (raises on a row deleted with the wrong document)."""
    with write_transaction(engine) as conn:
        conn.execute(text("INSERT INTO completion_search (completion_search, rank) VALUES ('integrity-check', 1)"))


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """SQLite only: PostgreSQL indexes inside the group commit."""
    eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('deferred') / 'search.db'}")
    upgrade_database(eng)
    yield eng
    eng.dispose()


def test_deferred_completions_are_found_once_an_index_step_ran(sqlite_engine: Engine, project: str) -> None:
    word = "zq" + uuid.uuid4().hex[:10]
    recs = [record(project, f"{word} {i}") for i in range(5)]
    documents = _deferred(sqlite_engine, recs)
    assert len(documents) == 5
    assert found(sqlite_engine, project) == [r.id for r in recs]  # stored and listed at once...
    assert found(sqlite_engine, project, search=word) == []  # ...searchable after a step
    indexed, through = _index_step(sqlite_engine, documents, limit=3)
    assert indexed == 3 and found(sqlite_engine, project, search=word) == [r.id for r in recs[:3]]
    indexed, last = _index_step(sqlite_engine, documents)
    assert indexed == 2 and last > through
    assert found(sqlite_engine, project, search=word) == [r.id for r in recs]
    assert _index_step(sqlite_engine, documents) == (0, last)  # nothing left: the watermark stays


def test_deleted_before_indexed_is_never_indexed_nor_unindexed(sqlite_engine: Engine, project: str) -> None:
    """A contentless FTS5 row deleted with a document it was not indexed under corrupts the index: the
    delete paths must leave rows above the watermark alone, and the step must skip their numbers."""
    word = "zq" + uuid.uuid4().hex[:10]
    indexed_first = record(project, f"{word} early")
    save_completions(sqlite_engine, [indexed_first])  # no `documents`: indexed in its own transaction
    recs = [record(project, f"{word} {i}", colour="red" if i % 2 else "blue") for i in range(4)]
    documents = _deferred(sqlite_engine, recs)
    with write_transaction(sqlite_engine) as conn:
        assert delete_completion(conn, project, recs[0].id)
        assert delete_completion(conn, project, indexed_first.id)
        assert purge.delete_completions_batch(conn, project, purge.CompletionFilter(metadata=(("colour", "red"),)), 10)
    _integrity_check(sqlite_engine)
    indexed, through = _index_step(sqlite_engine, documents)
    assert indexed == 1  # recs[2]: the only one left
    assert max(documents) == through  # past the deleted numbers
    assert found(sqlite_engine, project, search=word) == [recs[2].id]
    assert raw_matches(sqlite_engine, word) == 1
    _integrity_check(sqlite_engine)


def test_catch_up_rebuilds_documents_the_writer_did_not_keep(sqlite_engine: Engine, project: str) -> None:
    """Another process's completions, or this one's from before a restart: rebuilt from the rows."""
    word = "zq" + uuid.uuid4().hex[:10]
    recs = [record(project, f"{word} question {i}", f"answer {word}x{i}") for i in range(3)]
    documents = _deferred(sqlite_engine, recs)
    with write_transaction(sqlite_engine) as conn:
        search_tail.catch_up(conn)
    assert found(sqlite_engine, project, search=f"{word}x1") == [recs[1].id]
    assert found(sqlite_engine, project, search=f"{word} question") == [r.id for r in recs]
    with raw_write_transaction(sqlite_engine) as cursor:
        rebuilt = search_tail._rebuild(cursor, sorted(documents))
    assert rebuilt == documents  # the same documents as the writer's


def test_the_writer_indexes_when_idle_and_catches_up_on_demand(sqlite_engine: Engine, project: str) -> None:
    word = "zq" + uuid.uuid4().hex[:10]
    queue = CommitQueue(sqlite_engine)

    async def main() -> None:
        first = record(project, f"{word} idle")
        await queue.commit(first, timeout=30)
        for _ in range(500):  # indexed once the writer has been idle for INDEX_IDLE
            if found(sqlite_engine, project, search=word):
                break
            await asyncio.sleep(0.01)
        assert found(sqlite_engine, project, search=word) == [first.id]
        burst = [record(project, f"{word} burst {i}") for i in range(20)]
        await asyncio.gather(*(queue.commit(r, timeout=30) for r in burst))
        await queue.write(search_tail.catch_up)  # what a search runs first (stored.catch_up_search)
        assert found(sqlite_engine, project, search=f"{word} burst") == [r.id for r in burst]

    try:
        asyncio.run(main())
    finally:
        queue.close()
    assert not queue._unindexed  # pruned, whoever indexed them


def test_closing_the_writer_indexes_what_it_committed(sqlite_engine: Engine, project: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(writer, "INDEX_IDLE", 60.0)  # never idle long enough
    monkeypatch.setattr(writer, "INDEX_EVERY", 60.0)
    word = "zq" + uuid.uuid4().hex[:10]
    queue = CommitQueue(sqlite_engine)
    recs = [record(project, f"{word} {i}") for i in range(3)]

    async def main() -> None:
        for r in recs:
            await queue.commit(r, timeout=30)

    asyncio.run(main())
    assert found(sqlite_engine, project, search=word) == []
    queue.close()
    assert found(sqlite_engine, project, search=word) == [r.id for r in recs]
