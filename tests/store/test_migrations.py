"""Alembic migrations build exactly the schema of stillroom.store.tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert, inspect, select, text

from stillroom.store import migrate
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.search import SEARCH_TABLES
from stillroom.store.tables import completions, metadata
from stillroom.store.timeline import id_micros

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# SQLAlchemy does not reflect SQLite's indexes on an expression, so Alembic cannot compare them and says so:
# `test_0009_indexes_the_own_model_where_it_differs` checks that one instead.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Skipped unsupported reflection of expression-based index",
    "ignore:autogenerate skipping metadata-specified expression-based index",
)


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(Path(migrate.__file__).with_name("migrations")))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=["sqlite", "postgres"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A brand-new empty database of each backend (not the session's shared one, which is migrated)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        yield engine
        engine.dispose()
        return
    name = f"stillroom_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _not_search(_object: Any, name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
    """The search index's tables are the backend's own kind (stillroom.store.search), not in tables.py."""
    return not (type_ == "table" and reflected and name in set().union(*SEARCH_TABLES.values()))


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        opts = {"compare_type": True, "compare_server_default": True, "include_object": _not_search}
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, metadata))


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    inspector = inspect(engine)
    return {
        table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
            "pk": inspector.get_pk_constraint(table)["constrained_columns"],
        }
        for table in sorted(inspector.get_table_names())
    }


def version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def test_new_database_starts_empty(empty_engine: Engine) -> None:
    assert inspect(empty_engine).get_table_names() == []


def test_upgrade_of_an_empty_database_matches_the_table_definitions(empty_engine: Engine) -> None:
    assert schema_diff(empty_engine)  # sanity: an empty database does differ
    upgrade_database(empty_engine)
    assert schema_diff(empty_engine) == []
    search_tables = SEARCH_TABLES[empty_engine.dialect.name]
    assert set(inspect(empty_engine).get_table_names()) == {*metadata.tables, "alembic_version", *search_tables}
    assert version(empty_engine) == [head_revision()]


def completion_row(cid: str, seq: int = 1) -> dict[str, Any]:
    return {
        "id": cid,
        "seq": seq,
        "model": "m",
        "created": 1,
        "provider": "openai",
        "request": "{}",
        "response": "{}",
        "message_digests": "[]",
        "metadata": "{}",
        "request_id": "req_1",
        "stream": False,
        "incomplete": False,
        "latency_ms": 1.0,
        "stored_bytes": 6,
    }


def test_migrated_completion_ids_sort_bytewise(empty_engine: Engine) -> None:
    upgrade_database(empty_engine)
    ids = ["chatcmpl-b", "chatcmpl-B", "chatcmpl-a", "chatcmpl-0", "chatcmpl-Z", "chatcmpl-A"]
    with empty_engine.begin() as conn:
        conn.execute(insert(completions), [completion_row(cid, n) for n, cid in enumerate(ids)])
        ordered = list(conn.execute(select(completions.c.id).order_by(completions.c.id)).scalars())
    assert ordered == sorted(ids, key=str.encode)  # 0 < A < B < Z < a < b, whatever the database locale
    if empty_engine.dialect.name == "postgresql":
        columns = {c["name"]: c for c in inspect(empty_engine).get_columns("completions")}
        assert getattr(columns["id"]["type"], "collation", None) == "C"


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    upgrade_database(empty_engine)
    before = schema_snapshot(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(insert(completions), completion_row("chatcmpl-kept"))
    upgrade_database(empty_engine)
    assert schema_snapshot(empty_engine) == before
    assert schema_diff(empty_engine) == []
    assert version(empty_engine) == [head_revision()]
    with empty_engine.connect() as conn:
        kept = conn.execute(select(completions.c.id, completions.c.project_id)).all()
    assert [tuple(r) for r in kept] == [("chatcmpl-kept", "default")]


def test_0007_indexes_existing_completions_and_sets_their_commit_clock(empty_engine: Engine) -> None:
    upgrade_database(empty_engine, "0006")
    late, early = "chatcmpl-000000200aaaa", "chatcmpl-000000100bbbb"  # committed late: seq 1 is the later id
    with empty_engine.begin() as conn:
        body = '{"role": "user", "content": "Where is my parcel?"}'
        conn.execute(
            text(
                "INSERT INTO message_contents (project_id, digest, body, size, refs) VALUES ('default', 'd1', :b, 1, 2)"
            ),
            {"b": body},
        )
        for n, cid in enumerate((late, early), start=1):
            row = {**completion_row(cid, n), "message_digests": '["d1"]', "response": '{"choices": []}'}
            conn.execute(
                text(
                    "INSERT INTO completions (" + ", ".join(row) + ") VALUES (" + ", ".join(f":{k}" for k in row) + ")"
                ),
                row,
            )
        conn.execute(text("UPDATE sequences SET value = 2 WHERE name = 'completions'"))
    upgrade_database(empty_engine)
    assert schema_diff(empty_engine) == []
    with empty_engine.connect() as conn:
        clocks = conn.execute(text("SELECT id, clock FROM completions ORDER BY seq")).all()
        lag = conn.execute(text("SELECT lag FROM sequences WHERE name = 'completions'")).scalar()
        if empty_engine.dialect.name == "sqlite":
            hits = conn.execute(text("SELECT rowid FROM completion_search WHERE completion_search MATCH 'parcel'"))
        else:
            hits = conn.execute(text("SELECT seq FROM completion_search WHERE document @@ 'parcel'::tsquery"))
        assert sorted(hits.scalars()) == [1, 2]
    assert [(cid, clock) for cid, clock in clocks] == [(late, id_micros(late)), (early, id_micros(late))]
    assert lag == id_micros(late) - id_micros(early)


def test_0002_numbers_existing_rows_in_id_order_and_widens_time_and_size_columns(empty_engine: Engine) -> None:
    upgrade_database(empty_engine, "0001")
    old = {key: value for key, value in completion_row("x").items() if key != "seq"}
    ids = ["chatcmpl-c", "chatcmpl-a", "chatcmpl-b"]
    with empty_engine.begin() as conn:
        for cid in ids:
            conn.execute(
                text(
                    "INSERT INTO completions (" + ", ".join(old) + ") VALUES (" + ", ".join(f":{k}" for k in old) + ")"
                ),
                {**old, "id": cid},
            )
            conn.execute(
                text(
                    "INSERT INTO completion_metadata (completion_id, key, value, project_id) "
                    "VALUES (:id, 'k', 'v', 'default')"
                ),
                {"id": cid},
            )
    upgrade_database(empty_engine)
    assert schema_diff(empty_engine) == []
    with empty_engine.begin() as conn:
        assert conn.execute(text("SELECT id, seq FROM completions ORDER BY seq")).all() == [
            ("chatcmpl-a", 1),
            ("chatcmpl-b", 2),
            ("chatcmpl-c", 3),
        ]
        assert conn.execute(text("SELECT completion_id, seq FROM completion_metadata ORDER BY seq")).all() == [
            ("chatcmpl-a", 1),
            ("chatcmpl-b", 2),
            ("chatcmpl-c", 3),
        ]
        assert conn.execute(text("SELECT name, value FROM sequences WHERE name = 'completions'")).all() == [
            ("completions", 3)
        ]
        # Milliseconds (and sizes past 2 GiB) fit: these overflowed PostgreSQL's 32-bit columns.
        conn.execute(
            insert(completions),
            {**completion_row("chatcmpl-ms", 4), "created": 1_700_000_000_123, "stored_bytes": 2**40},
        )
        assert conn.execute(select(completions.c.created).where(completions.c.id == "chatcmpl-ms")).scalar() == (
            1_700_000_000_123
        )


def test_0008_fills_response_model_from_the_stored_responses(empty_engine: Engine) -> None:
    upgrade_database(empty_engine, "0007")
    responses = {
        "chatcmpl-a": '{"model": "gpt-4o-mini-2024-07-18"}',
        "chatcmpl-b": '{"model": 7}',  # not a string: no name
        "chatcmpl-c": "{}",
        "chatcmpl-d": '{"model": "' + "m" * 300 + '"}',  # cut to the column's 256 characters
    }
    with empty_engine.begin() as conn:
        for n, (cid, response) in enumerate(responses.items()):
            row = {**completion_row(cid, n), "response": response}
            conn.execute(
                text(
                    "INSERT INTO completions (" + ", ".join(row) + ") VALUES (" + ", ".join(f":{k}" for k in row) + ")"
                ),
                row,
            )
    upgrade_database(empty_engine)
    assert schema_diff(empty_engine) == []
    with empty_engine.begin() as conn:
        filled = dict(conn.execute(text("SELECT id, response_model FROM completions")).all())
    assert filled == {
        "chatcmpl-a": "gpt-4o-mini-2024-07-18",
        "chatcmpl-b": "",
        "chatcmpl-c": "",
        "chatcmpl-d": "m" * 256,
    }


def test_0009_indexes_the_own_model_where_it_differs(empty_engine: Engine) -> None:
    upgrade_database(empty_engine)
    sql = {
        "sqlite": "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'completions'",
        "postgresql": "SELECT indexdef FROM pg_indexes WHERE tablename = 'completions'",
    }[empty_engine.dialect.name]
    with empty_engine.connect() as conn:
        found = [
            d.lower().replace("::text", "").replace("(", "").replace(")", "")
            for d in conn.execute(text(sql)).scalars()
            if d
        ]
    (other,) = (d for d in found if "ix_completions_project_other_model_seq" in d)
    assert "project_id, nullifresponse_model, model, seq" in other, other
    assert not any("ix_completions_project_response_model_seq" in d for d in found), found
