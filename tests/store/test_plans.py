"""The list filters are served by their indexes on both databases, in list (commit sequence) order, not by
scanning a table or sorting.

A few thousand completions are stored and the tables ANALYZEd first, so the planners choose as they would
on a real database rather than on empty tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from stillroom.store.completions import CompletionRecord, list_statement, save_completions
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.wire.ids import new_completion_id

PROJECT = f"plans-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def plan_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade_database(engine)
    records = [
        CompletionRecord(
            id=new_completion_id(),
            project_id=PROJECT,
            model=_model(i),
            provider="openai",
            request={},
            # "same" reports its configured name, as o4-mini does; the others a dated one.
            response={"created": 1, "model": _model(i) if _model(i) == "same" else f"{_model(i)}-2024", "choices": []},
            messages=[{"role": "user", "content": f"question {i}"}],
            metadata={"tag": f"t{i % 50}", "user": f"u{i % 400}", "experiment": f"e{i % 3}"},
            request_id="req",
            stream=False,
            incomplete=False,
            latency_ms=1.0,
        )
        for i in range(4000)
    ]
    save_completions(engine, records)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    yield engine
    engine.dispose()


def _model(i: int) -> str:
    return "rare" if i % 400 == 0 else "same" if i % 400 == 200 else f"model-{i % 3}"


def _plan(engine: Engine, **query: object) -> str:
    arguments = {"metadata": [], "model": None, "after_seq": None, "limit": 21, "descending": False} | query
    stmt = list_statement(PROJECT, **arguments)  # type: ignore[arg-type]
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.execute(text(explain + sql)))


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ({"metadata": [("tag", "t7")]}, "ix_completion_metadata_lookup"),
        ({"metadata": [("user", "u9"), ("tag", "t9")], "after_seq": 10}, "ix_completion_metadata_lookup"),
        ({"metadata": [("tag", "t7")], "descending": True}, "ix_completion_metadata_lookup"),
        ({"metadata": [("tag", "t7")], "model": "model-1"}, "ix_completion_metadata_lookup"),
        # Unfiltered, the planner may walk the (project, seq) index or the global seq index: both in list order.
        ({}, "ix_completions_project_seq|ux_completions_seq"),
        ({"after_seq": 10}, "ix_completions_project_seq|ux_completions_seq"),
    ],
)
def test_list_filters_use_their_index(plan_engine: Engine, query: dict[str, object], index: str) -> None:
    plan = _plan(plan_engine, **query)
    assert any(name in plan for name in index.split("|")), plan
    if plan_engine.dialect.name == "sqlite":
        assert "SCAN completions" not in plan and "SCAN completion_metadata" not in plan, plan
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
    else:
        assert "Seq Scan" not in plan and "Sort" not in plan, plan


@pytest.mark.parametrize(
    "query",
    [{"model": "rare"}, {"model": "rare-2024", "after_seq": 10, "descending": True}, {"model": "same"}],
    ids=["configured", "own-desc", "own-is-configured"],
)
def test_a_model_filter_walks_each_model_index_one_page_at_most(plan_engine: Engine, query: dict[str, object]) -> None:
    """`model` matches the configured name or the stored object's own: one walk of each (project, name,
    seq) index in list order, each cut at the page size, so what is merged (or sorted) is two pages at most.
    The own name's index holds only the rows whose two names differ, so for a model that reports its own
    name ("same") that walk finds nothing at once rather than reading every row of the model."""
    plan = _plan(plan_engine, **query)
    assert "ix_completions_project_model_seq" in plan, plan
    assert "ix_completions_project_other_model_seq" in plan, plan
    if plan_engine.dialect.name == "sqlite":
        assert "SCAN completions" not in plan, plan
    else:
        assert "Seq Scan" not in plan, plan
        assert plan.count("Limit") >= 3, plan  # the page, and each walk under it
