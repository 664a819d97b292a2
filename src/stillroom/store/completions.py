"""Stored completions: get, update, delete and accounting here, and the store's surface for the rest
(re-exported): the record kept and the group commit that saves it (stillroom.store.group_commit), the row
read back and list pages (stillroom.store.pages). Input messages are stored once per project by content
address and freed when unreferenced.

Every row has its place in the commit sequence (`seq`, the list order): a batch takes the next numbers from
the `sequences` row, whose row lock it holds until it commits. A deleted row's number is kept in
`completion_tombstones` so that its id still works as a cursor.

Writes take a Connection in a write transaction (the writer thread opens it, stillroom.store.writer);
reads open their own snapshot (one transaction, REPEATABLE READ on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)

from stillroom.errors import QuotaExceededError
from stillroom.store import search
from stillroom.store.db import read_transaction
from stillroom.store.group_commit import CompletionRecord as CompletionRecord
from stillroom.store.group_commit import save_completions as save_completions
from stillroom.store.group_commit import serialise_completions as serialise_completions
from stillroom.store.pages import COLUMNS, message_bodies, row_to_stored
from stillroom.store.pages import CursorNotFoundError as CursorNotFoundError
from stillroom.store.pages import StoredCompletion as StoredCompletion
from stillroom.store.pages import list_completions as list_completions
from stillroom.store.pages import list_completions_with_messages as list_completions_with_messages
from stillroom.store.pages import list_statement as list_statement
from stillroom.store.projects import add_usage, lock_usage
from stillroom.store.tables import (
    completion_metadata,
    completion_tombstones,
    completions,
    message_contents,
    sequences,
)

# --- get -----------------------------------------------------------------------------------------------


def get_completion(engine: Engine, project_id: str, completion_id: str) -> StoredCompletion | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*COLUMNS).where(completions.c.project_id == project_id, completions.c.id == completion_id)
        ).first()
    return row_to_stored(row) if row else None


def get_messages(engine: Engine, project_id: str, completion_id: str) -> list[dict[str, Any]] | None:
    """The input messages of a completion, in order; None when there is no such completion. The digests
    and the bodies come from one snapshot, so a concurrent delete means "none", never half an answer."""
    with read_transaction(engine) as conn:
        digests_json = conn.execute(
            select(completions.c.message_digests).where(
                completions.c.project_id == project_id, completions.c.id == completion_id
            )
        ).scalar()
        if digests_json is None:
            return None
        digests = orjson.loads(digests_json)
        bodies = message_bodies(conn, project_id, set(digests))
    return [bodies[d] for d in digests]


# --- update, delete (run by the writer, in its write transaction) ------------------------------------


def update_metadata(
    conn: Connection,
    project_id: str,
    completion_id: str,
    merge: Callable[[dict[str, str]], dict[str, str]],
) -> StoredCompletion | None:
    """Replace a completion's metadata with `merge(current)` (merge may raise: the caller's transaction
    then rolls back). The completion keeps its place in the list order."""
    usage = lock_usage(conn, project_id)
    stmt = select(*COLUMNS).where(completions.c.project_id == project_id, completions.c.id == completion_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        return None
    stored = row_to_stored(row)
    old_json = row.metadata
    stored.metadata = merge(stored.metadata)
    new_json = orjson.dumps(stored.metadata).decode()
    grown = len(new_json.encode()) - len(old_json.encode())
    if usage is not None and grown > 0 and usage[0] + grown > usage[1]:
        raise QuotaExceededError("This project's stored data is at its quota: the metadata cannot grow.")
    if usage is not None:
        add_usage(conn, project_id, grown)
    conn.execute(
        update(completions)
        .where(completions.c.id == completion_id)
        .values(
            metadata=new_json,
            stored_bytes=completions.c.stored_bytes + len(new_json.encode()) - len(old_json.encode()),
        )
    )
    conn.execute(delete(completion_metadata).where(completion_metadata.c.completion_id == completion_id))
    if stored.metadata:
        conn.execute(
            insert(completion_metadata),
            [
                {"completion_id": completion_id, "project_id": project_id, "key": k, "value": v, "seq": stored.seq}
                for k, v in stored.metadata.items()
            ],
        )
    return stored


def delete_completion(conn: Connection, project_id: str, completion_id: str) -> bool:
    """Delete a completion and release its message contents; False when there was none. Its sequence
    number stays behind as a tombstone, so `after=<its id>` still resumes where it was. The project's usage
    goes down by the bytes freed (its row locked first, as every write of a project's bytes does)."""
    lock_usage(conn, project_id)
    deleted = conn.execute(
        delete(completions)
        .where(completions.c.project_id == project_id, completions.c.id == completion_id)
        .returning(completions.c.message_digests, completions.c.seq, completions.c.stored_bytes, completions.c.response)
    ).first()
    if deleted is None:
        return False
    search.unindex_completions(conn, project_id, [(deleted.seq, deleted.response, deleted.message_digests)])
    conn.execute(insert(completion_tombstones).values(id=completion_id, project_id=project_id, seq=deleted.seq))
    conn.execute(delete(completion_metadata).where(completion_metadata.c.completion_id == completion_id))
    counts: dict[str, int] = {}
    for digest in orjson.loads(deleted.message_digests):
        counts[digest] = counts.get(digest, 0) + 1
    mc = message_contents.c
    for digest, n in sorted(counts.items()):
        conn.execute(
            update(message_contents).where(mc.project_id == project_id, mc.digest == digest).values(refs=mc.refs - n)
        )
    freed = conn.execute(
        delete(message_contents)
        .where(and_(mc.project_id == project_id, mc.digest.in_(list(counts)), mc.refs <= 0))
        .returning(mc.size)
    ).scalars()
    add_usage(conn, project_id, -(int(deleted.stored_bytes) + sum(int(size) for size in freed)))
    return True


def probe_writes(conn: Connection) -> None:
    """Touch every table a save writes, changing nothing: whether the writer could commit right now."""
    for table in (sequences, completions, completion_metadata, message_contents):
        conn.execute(select(literal(1)).select_from(table).limit(0)).all()


# --- accounting ----------------------------------------------------------------------------------------


def storage_usage(engine: Engine) -> dict[str, int]:
    """Bytes actually kept per project: completion rows plus the (shared) message contents."""
    usage: dict[str, int] = {}
    with read_transaction(engine) as conn:
        for project, total in conn.execute(
            select(completions.c.project_id, func.sum(completions.c.stored_bytes)).group_by(completions.c.project_id)
        ):
            usage[project] = usage.get(project, 0) + int(total or 0)
        for project, total in conn.execute(
            select(message_contents.c.project_id, func.sum(message_contents.c.size)).group_by(
                message_contents.c.project_id
            )
        ):
            usage[project] = usage.get(project, 0) + int(total or 0)
    return usage


def count_rows(engine: Engine) -> dict[str, int]:
    """Row counts of every stored table (what error-path tests check did not change)."""
    with read_transaction(engine) as conn:
        return {
            table.name: int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
            for table in (completions, completion_metadata, message_contents)
        }
