"""Deleting in bulk: stored completions by filter (with a dry-run count), retention batches, whole projects.

Each batch is one transaction that first locks the project's usage row, deletes with RETURNING (so two
processes sweeping the same rows free each one once), releases the message contents no completion uses any
more, and moves the project's `used_bytes` by what it freed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Select, delete, exists, func, insert, or_, select, update

from stillroom.store import search as fts
from stillroom.store.projects import add_usage, bump_access, lock_usage
from stillroom.store.tables import (
    completion_metadata,
    completion_tombstones,
    completions,
    files,
    message_contents,
    metadata,
    other_model,
    projects,
    sequences,
)
from stillroom.store.timeline import id_micros


@dataclass(frozen=True, slots=True)
class CompletionFilter:
    """Which stored completions: every metadata pair, a model, ids (= times) in [id_from, id_to), the words
    of a full-text search (stillroom.store.search)."""

    metadata: Sequence[tuple[str, str]] = ()
    model: str | None = None
    id_from: str | None = None
    id_to: str | None = None
    search: fts.Words | None = None


def _matching(conn: Connection, project_id: str, selection: CompletionFilter) -> Select[Any]:
    c = completions.c
    stmt = select(c.id).where(c.project_id == project_id)
    if selection.search is not None:
        seq, condition = fts.matching_seqs(conn.dialect.name, selection.search)
        stmt = stmt.where(c.seq.in_(select(seq).select_from(fts.search_table).where(condition)))
    for key, value in selection.metadata:
        m = completion_metadata.c
        stmt = stmt.where(
            exists().where(m.project_id == project_id, m.completion_id == c.id, m.key == key, m.value == value)
        )
    if selection.model is not None:  # the configured name or the stored object's own, as the list matches
        stmt = stmt.where(or_(c.model == selection.model, other_model == selection.model))
    # A time range also bounds the commit clock (stillroom.store.timeline), which its index walks in range.
    if selection.id_from is not None:
        stmt = stmt.where(c.id >= selection.id_from, c.clock >= id_micros(selection.id_from))
    if selection.id_to is not None:
        lag = conn.execute(select(sequences.c.lag).where(sequences.c.name == "completions")).scalar() or 0
        stmt = stmt.where(c.id < selection.id_to, c.clock < id_micros(selection.id_to) + int(lag))
    return stmt


def count_completions(engine: Engine, project_id: str, selection: CompletionFilter) -> int:
    """How many a delete with this filter would remove (the dry run)."""
    with engine.connect() as conn:
        sub = _matching(conn, project_id, selection).subquery()
        return int(conn.execute(select(func.count()).select_from(sub)).scalar() or 0)


def delete_completions_batch(conn: Connection, project_id: str, selection: CompletionFilter, limit: int) -> int:
    """Delete at most `limit` matching completions (one write transaction); how many were deleted."""
    if lock_usage(conn, project_id) is None:
        return 0
    matching = _matching(conn, project_id, selection)
    ids = list(conn.execute(matching.order_by(completions.c.id).limit(limit)).scalars())
    return delete_completion_ids(conn, project_id, ids)


def delete_completion_ids(conn: Connection, project_id: str, ids: Sequence[str]) -> int:
    """Delete these completions of a project (the caller holds the usage lock), free their unshared message
    contents and their bytes; how many were really deleted."""
    if not ids:
        return 0
    c = completions.c
    gone = conn.execute(
        delete(completions)
        .where(c.project_id == project_id, c.id.in_(list(ids)))
        .returning(c.id, c.message_digests, c.stored_bytes, c.seq, c.response)
    ).all()
    if not gone:
        return 0
    fts.unindex_completions(conn, project_id, [(r.seq, r.response, r.message_digests) for r in gone])
    gone_ids = [row.id for row in gone]
    # Their places in the commit sequence stay behind, so `after=<a deleted id>` still resumes there.
    conn.execute(insert(completion_tombstones), [{"id": r.id, "project_id": project_id, "seq": r.seq} for r in gone])
    conn.execute(delete(completion_metadata).where(completion_metadata.c.completion_id.in_(gone_ids)))
    counts: dict[str, int] = {}
    for row in gone:
        for digest in orjson.loads(row.message_digests):
            counts[digest] = counts.get(digest, 0) + 1
    mc = message_contents.c
    for digest, n in sorted(counts.items()):
        conn.execute(
            update(message_contents).where(mc.project_id == project_id, mc.digest == digest).values(refs=mc.refs - n)
        )
    freed = sum(int(row.stored_bytes) for row in gone)
    if counts:
        freed += sum(
            int(size)
            for size in conn.execute(
                delete(message_contents)
                .where(mc.project_id == project_id, mc.digest.in_(sorted(counts)), mc.refs <= 0)
                .returning(mc.size)
            ).scalars()
        )
    add_usage(conn, project_id, -freed)
    return len(gone)


def retained_projects(engine: Engine) -> list[tuple[str, int]]:
    """(project, retention days) of every project with a retention limit."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(projects.c.id, projects.c.retention_days).where(projects.c.retention_days.is_not(None))
        )
        return [(pid, int(days)) for pid, days in rows]


def project_tables() -> list[Any]:
    """Every table with a `project_id` column, children before parents."""
    return [t for t in reversed(metadata.sorted_tables) if "project_id" in t.c]


@dataclass(frozen=True, slots=True)
class DeletedProject:
    rows: dict[str, int]  # rows deleted per table
    storage_keys: list[str]  # where its files' bytes are: the caller frees them once this has committed


def delete_project(conn: Connection, project_id: str) -> DeletedProject | None:
    """Delete a project and every row it owns, in every table, in one transaction. None when there is no
    such project. Rows without a `project_id` go with their parents (ON DELETE CASCADE)."""
    if lock_usage(conn, project_id) is None:
        return None
    keys = list(conn.execute(select(files.c.storage_key).where(files.c.project_id == project_id)).scalars())
    _unindex_project(conn, project_id)
    deleted = {}
    for table in project_tables():
        deleted[str(table.name)] = int(conn.execute(delete(table).where(table.c.project_id == project_id)).rowcount)
    conn.execute(delete(projects).where(projects.c.id == project_id))
    bump_access(conn)
    return DeletedProject(deleted, keys)


def _unindex_project(conn: Connection, project_id: str, batch: int = 2000) -> None:
    """Take every completion of the project out of the search index (SQLite's needs each document)."""
    if conn.dialect.name != "sqlite":
        return
    c = completions.c
    after = -1
    while True:
        rows = conn.execute(
            select(c.seq, c.response, c.message_digests)
            .where(c.project_id == project_id, c.seq > after)
            .order_by(c.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        fts.unindex_completions(conn, project_id, [(r.seq, r.response, r.message_digests) for r in rows])
        after = int(rows[-1].seq)
