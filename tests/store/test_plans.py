"""The list filters are served by indexes on both databases, not by scanning the table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from stillroom.store.completions import list_statement
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database


@pytest.fixture(scope="module")
def plan_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _plan(engine: Engine, **query: object) -> str:
    arguments = {"metadata": {}, "model": None, "after": None, "limit": 21, "descending": False} | query
    stmt = list_statement("p", **arguments)  # type: ignore[arg-type]
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "\n".join(str(row[-1]) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
        conn.execute(text("SET LOCAL enable_seqscan = off"))  # tiny test tables: ask which index serves
        return "\n".join(row[0] for row in conn.execute(text("EXPLAIN " + sql)))


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ({"metadata": {"tag": "x"}}, "ix_completion_metadata_lookup"),
        ({"metadata": {"tag": "x", "user": "u"}, "after": "chatcmpl-0"}, "ix_completion_metadata_lookup"),
        ({"metadata": {"tag": "x"}, "descending": True}, "ix_completion_metadata_lookup"),
        ({"model": "gpt-4o"}, "ix_completions_project_model_id"),
        # Unfiltered, the planner may walk the (project, id) index or the id primary key: both read in id order.
        ({}, "ix_completions_project_id|completions_pkey"),
    ],
)
def test_list_filters_use_their_index(plan_engine: Engine, query: dict[str, object], index: str) -> None:
    plan = _plan(plan_engine, **query)
    assert any(name in plan for name in index.split("|")), plan
    if plan_engine.dialect.name == "sqlite":
        assert "SCAN completions" not in plan and "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
    else:
        assert "Seq Scan" not in plan and "Sort" not in plan, plan
