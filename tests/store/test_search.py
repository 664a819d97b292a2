"""Full-text search and time ranges on stored completions (stillroom.store.search, stillroom.store.timeline),
on SQLite and PostgreSQL: what is found, combined with the other filters and keyset pages, and the index
kept in step by every delete path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stillroom.store import purge
from stillroom.store.completions import CompletionRecord, delete_completion, list_completions, save_completions
from stillroom.store.db import make_engine, write_transaction
from stillroom.store.migrate import upgrade_database
from stillroom.store.projects import create_project
from stillroom.store.search import document_text, fts5_query, parse_search, search_terms, tsquery
from stillroom.store.timeline import id_micros
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
