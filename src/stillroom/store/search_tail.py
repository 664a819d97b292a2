"""SQLite's search index is written after the commit, a batch at a time, not by every group commit.

An FTS5 transaction writes a new index segment whatever it holds, and now and then merges segments: in a
one-completion batch (the usual size below saturation) that cost as much CPU as the rest of the batch
(0.25 of 0.52 ms) and put merges of several milliseconds inside commits that requests wait on. So on
SQLite the group commit leaves the index alone and hands its documents to the writer
(`save_completions(documents=...)`), which indexes what has been committed since the last step when it is
idle, and at least every `INDEX_EVERY` seconds while it is busy (stillroom.store.writer).

The `sequences` row `search` is the watermark: every completion whose seq is at or below its value is in
the index, none above it (migration 0010 starts it where the index stands). `index_pending` indexes the
completions above it and moves it on; the delete paths unindex only rows at or below it
(search.unindex_completions). Both run in write transactions, which SQLite serialises, so they cannot
race, whichever process runs them. Documents the writer did not keep (another process's, or from before a
restart) are rebuilt from the rows. A search sees a completion once a step has run after its commit;
`catch_up`, run as a write before a search, makes it see everything committed before it.

PostgreSQL indexes inside the group commit (its GIN index batches insertions in a pending list already).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import Connection

from stillroom.store.search import WATERMARK_SQL, document_text, index_rows

INDEX_LIMIT = 1024  # completions indexed per step at most
_IN_CHUNK = 500  # values per IN (...) list


def indexed_through(cursor: Any) -> int:
    """The watermark: every completion with seq <= it is indexed, none above. `cursor`: a DBAPI cursor."""
    cursor.execute(WATERMARK_SQL)
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the database predates migration 0010: start `stillroom serve` once to upgrade it")
    return int(row[0])


def index_pending(cursor: Any, documents: Mapping[int, str], limit: int = INDEX_LIMIT) -> tuple[int, int]:
    """Index (in the caller's write transaction, on SQLite) up to `limit` completions above the watermark,
    in seq order, and move it on; returns (how many were indexed, the new watermark). `documents`: seq ->
    document for the ones the caller has; the others are rebuilt from their rows. When fewer than `limit`
    are left, the watermark goes to the last seq given out: the numbers between that have no row were
    deleted before they were indexed."""
    through = indexed_through(cursor)
    cursor.execute("SELECT seq FROM completions WHERE seq > ? ORDER BY seq LIMIT ?", (through, limit))
    seqs = [int(row[0]) for row in cursor.fetchall()]
    if len(seqs) < limit:
        cursor.execute("SELECT value FROM sequences WHERE name = 'completions'")
        row = cursor.fetchone()
        last = int(row[0]) if row is not None else through
    else:
        last = seqs[-1]
    if seqs:
        rebuilt = _rebuild(cursor, [seq for seq in seqs if seq not in documents])
        index_rows(
            cursor.execute, "sqlite", [(seq, documents[seq] if seq in documents else rebuilt[seq]) for seq in seqs]
        )
    if last != through:
        cursor.execute("UPDATE sequences SET value = ? WHERE name = 'search'", (last,))
    return len(seqs), last


def catch_up(conn: Connection) -> None:
    """Index every completion committed so far (a write: run it through the writer, `Writes`); nothing to
    do on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        return
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        while index_pending(cursor, {})[0] == INDEX_LIMIT:
            pass
    finally:
        cursor.close()


def _rebuild(cursor: Any, seqs: list[int]) -> dict[int, str]:
    """The documents of the completions at `seqs`, from their rows and message contents."""
    rows: list[tuple[int, str, Any, list[str]]] = []
    for start in range(0, len(seqs), _IN_CHUNK):
        chunk = seqs[start : start + _IN_CHUNK]
        cursor.execute(
            "SELECT seq, project_id, response, message_digests FROM completions "
            f"WHERE seq IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        rows.extend((int(seq), p, orjson.loads(r), orjson.loads(d)) for seq, p, r, d in cursor.fetchall())
    wanted: dict[str, set[str]] = {}
    for _, project_id, _, digests in rows:
        wanted.setdefault(project_id, set()).update(digests)
    bodies: dict[tuple[str, str], Any] = {}
    for project_id, needed in wanted.items():
        ordered = sorted(needed)
        for start in range(0, len(ordered), _IN_CHUNK):
            names = ordered[start : start + _IN_CHUNK]
            cursor.execute(
                "SELECT digest, body FROM message_contents "
                f"WHERE project_id = ? AND digest IN ({', '.join('?' * len(names))})",
                [project_id, *names],
            )
            bodies.update(((project_id, d), orjson.loads(body)) for d, body in cursor.fetchall())
    return {
        seq: document_text([bodies[(project_id, d)] for d in digests], response)
        for seq, project_id, response, digests in rows
    }
