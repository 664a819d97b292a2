"""Bulk loading stored completions into PostgreSQL for the benchmarks: the rows `save_completions` writes (same
tables, same content-addressed messages with their reference counts, same commit sequence and clock, same
usage accounting, same search documents), but sent with COPY in transactions of thousands of rows, with the
documents' tsvectors made in Python (`_tsvector`) and the indexes and foreign keys of the tables written
dropped during the load and built once at the end.

Through the store's write path PostgreSQL kept about 960 completions/s here, `to_tsvector` alone taking about
0.5 ms of server time per 2.2 kB document; this path wrote 200,000 at 1,350/s on a quiet machine (then the
Python side, generating, serialising and making documents, is most of the time). `check_bulk_load` in
bench/console_scale.py writes the same sample both ways and compares every table and the API's answers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg
from sqlalchemy import Engine

from stillroom.store import search

# The group commit's own statements and helpers, so that numbering, clock and accounting are its exactly.
from stillroom.store.group_commit import (
    _BYTES,
    _CLOCK_SQL,
    _COMPLETION_COLUMNS,
    _DIGESTS,
    _SEQUENCE_SQL,
    CompletionRecord,
    _stamp_clock,
    serialise_completions,
)
from stillroom.store.projects import admit_rows, settle_usage

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS bulk_contents (LIKE message_contents) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS bulk_documents (seq BIGINT NOT NULL, document TEXT NOT NULL) "
    "ON COMMIT DELETE ROWS",
)
_MERGE_CONTENTS = (
    # As the group commit's insert: refs comes back as the batch's own count exactly when the row is new.
    "INSERT INTO message_contents SELECT * FROM bulk_contents "
    "ON CONFLICT (project_id, digest) DO UPDATE SET refs = message_contents.refs + excluded.refs "
    "RETURNING project_id, digest, refs"
)
_INDEX_DOCUMENTS = (
    "INSERT INTO completion_search (seq, document) SELECT seq, to_tsvector('simple', document) FROM bulk_documents"
)


def bulk_save(conn: psycopg.Connection[Any], records: Sequence[CompletionRecord]) -> None:
    """Write one batch as `save_completions` would, in one transaction. Refuses (RuntimeError) a batch the
    project's quota would not take whole: the bulk path does not leave rows out."""
    content_rows, rows, meta_rows = serialise_completions(records)
    documents = {r.id: search.document_text(r.messages, r.response) for r in records}
    with conn.transaction(), conn.cursor() as cursor:
        for ddl in _STAGING:
            cursor.execute(ddl)
        cursor.execute(_SEQUENCE_SQL.format(p="%s"), (len(rows),))
        found = cursor.fetchone()
        assert found is not None
        value, clock, lag = (int(v) for v in found)
        first = value - len(rows) + 1
        cursor.execute(_CLOCK_SQL.format(p="%s"), _stamp_clock(rows, clock, lag))
        for row in rows:
            row[-1] += first
        for meta in meta_rows:
            meta[-1] += first
        admitted = [(row[0], row[1], int(row[_BYTES]), orjson.loads(row[_DIGESTS])) for row in rows]
        sizes = {(c[0], c[1]): int(c[3]) for c in content_rows}
        admission = admit_rows(cursor, "%s", True, admitted, sizes, int(time.time()))
        if admission.refused:
            raise RuntimeError(f"{len(admission.refused)} completions over the project's quota: not bulk-loadable")
        _copy(cursor, "bulk_contents (project_id, digest, body, size, refs)", content_rows)
        cursor.execute(_MERGE_CONTENTS)
        ours = {(row[0], row[1]): row for row in content_rows}
        inserted = {}
        for project_id, digest, refs in cursor.fetchall():
            row = ours[(project_id, digest)]
            if int(refs) == row[4]:
                inserted[(project_id, digest)] = row[3]
        if admission.pending:
            settle_usage(cursor, "%s", admission.pending, inserted)
        _copy(cursor, f"completions ({', '.join(_COMPLETION_COLUMNS)})", rows)
        _copy(cursor, "completion_metadata (completion_id, project_id, key, value, seq)", meta_rows)
        vectors = [(row[-1], documents[row[0]], _tsvector(documents[row[0]])) for row in rows]
        _copy(cursor, "completion_search (seq, document)", [(seq, v) for seq, _, v in vectors if v is not None])
        _copy(cursor, "bulk_documents (seq, document)", [(seq, d) for seq, d, v in vectors if v is None])
        cursor.execute(_INDEX_DOCUMENTS)


def _tsvector(document: str) -> str | None:
    """`to_tsvector('simple', document)` as tsvector input, for a document of plain ASCII-letter words (the
    benchmark's): each word a lexeme at its 1-based position (the input merges a lexeme's positions). None
    for any other document, which the database then parses itself. The parser, not the GIN index, is most of
    what indexing costs PostgreSQL (about 0.6 ms of server time per 2.2 kB document here)."""
    terms = document.split(" ")
    if len(terms) > 16_000 or not document.isascii() or not document.replace(" ", "").isalpha():
        return None
    if len(terms) > 255 and max(Counter(terms).values()) > 255:  # to_tsvector keeps only the first positions
        return None
    return " ".join(map(_LEXEME.format, terms, range(1, len(terms) + 1)))


_LEXEME = "'{}':{}"


def _copy(cursor: psycopg.Cursor[Any], target: str, rows: Iterable[Sequence[Any]]) -> None:
    with cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# The tables a load writes whose indexes and foreign keys are taken off meanwhile (message_contents keeps its
# primary key: the merge of reference counts needs it).
_BARE = ("completions", "completion_metadata", "completion_search")
_CONSTRAINTS_SQL = (
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
    "WHERE conrelid::regclass::text = ANY(%s) AND contype IN ('p', 'u', 'f') ORDER BY contype = 'f', conname"
)
_INDEXES_SQL = (
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY(%s) "
    "AND indexname NOT IN (SELECT conname FROM pg_constraint) ORDER BY indexname"
)


def bulk_load(engine: Engine, batches: Iterable[Sequence[CompletionRecord]], progress_every: int = 100_000) -> int:
    """Write every batch with `bulk_save`, with the written tables' indexes and foreign keys dropped meanwhile
    and then made again from their own definitions (checked to come back the same); how many rows were
    written."""
    assert engine.dialect.name == "postgresql", "the bulk load is PostgreSQL's (COPY)"
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    done = 0
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn:
        schema = _schema(conn)
        constraints, indexes = schema
        for table, name, _definition, _kind in reversed(constraints):  # foreign keys first
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")  # type: ignore[arg-type]
        for name, _definition in indexes:
            conn.execute(f"DROP INDEX {name}")  # type: ignore[arg-type]
        conn.commit()
        for batch in batches:
            bulk_save(conn, batch)
            before, done = done, done + len(batch)
            if done // progress_every > before // progress_every:
                print(f"  {done:>9,} rows  {done / (time.perf_counter() - t0):>7,.0f} rows/s", flush=True)
        t1 = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        keys = [c for c in constraints if c[3] != "f"]
        for table, name, definition, _kind in keys:
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")  # type: ignore[arg-type]
        for _name, definition in indexes:
            conn.execute(definition)  # type: ignore[arg-type]
        for table, name, definition, _kind in constraints[len(keys) :]:  # on the keys and unique indexes above
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")  # type: ignore[arg-type]
        conn.commit()
        assert _schema(conn) == schema, "the bulk load changed the schema"
        print(f"  {done:,} rows in {t1 - t0:.0f} s; indexes and keys made in {time.perf_counter() - t1:.0f} s")
    return done


def _schema(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    tables = list(_BARE)
    constraints = [tuple(r) for r in conn.execute(_CONSTRAINTS_SQL, (tables,))]
    indexes = [tuple(r) for r in conn.execute(_INDEXES_SQL, (tables,))]
    return constraints, indexes
