"""Projects and API keys: rows, the access snapshot every server caches, usage against quota.

Every write that changes a project's stored bytes locks the project's row first (`lock_usage`) and moves
`used_bytes` in the same transaction, so the running total is exact and the quota holds with several
processes writing at once. Changes to projects or keys bump the `access` counter, which each server polls to
refresh its cached snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from stillroom.store.db import write_transaction
from stillroom.store.tables import api_keys, projects, sequences

T = TypeVar("T")
ACCESS_COUNTER = "access"
DEFAULT_QUOTA_BYTES = 10 * 1000**3  # 10 GB, as Azure OpenAI's stored completions


@dataclass(frozen=True, slots=True)
class ProjectRow:
    id: str
    name: str
    created: int
    quota_bytes: int
    used_bytes: int
    not_stored: int
    storage_enabled: bool
    store_policy: str
    sample_rate: float
    default_metadata: dict[str, str]
    retention_days: int | None


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    project_id: str
    name: str
    role: str
    prefix: str
    hash: str
    created: int
    last_used: int | None
    store_policy: str | None
    sample_rate: float | None
    default_metadata: dict[str, str] | None


def _project(row: Any) -> ProjectRow:
    values = dict(row._mapping)
    values["default_metadata"] = orjson.loads(values["default_metadata"])
    return ProjectRow(**values)


def _key(row: Any) -> KeyRow:
    values = dict(row._mapping)
    if values["default_metadata"] is not None:
        values["default_metadata"] = orjson.loads(values["default_metadata"])
    return KeyRow(**values)


def _json(value: Mapping[str, str] | None) -> str | None:
    return None if value is None else orjson.dumps(dict(value)).decode()


def project_values(project_id: str, name: str, created: int, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> dict[str, Any]:
    """A new project's row: storage on, store only on request, no retention limit."""
    return {
        "id": project_id,
        "name": name,
        "created": created,
        "quota_bytes": quota_bytes,
        "used_bytes": 0,
        "not_stored": 0,
        "storage_enabled": True,
        "store_policy": "request",
        "sample_rate": 0.0,
        "default_metadata": "{}",
        "retention_days": None,
    }


def bump_access(conn: Connection) -> None:
    """Tell every server that projects or keys changed (they poll this counter)."""
    updated = conn.execute(
        update(sequences).where(sequences.c.name == ACCESS_COUNTER).values(value=sequences.c.value + 1)
    ).rowcount
    if not updated:
        conn.execute(insert(sequences).values(name=ACCESS_COUNTER, value=1))


class Writes(Protocol):
    """Runs `fn(conn)` in one write transaction and returns its result: the server's single writer
    (`CommitQueue.submit_write`), or `direct_writes` for the CLI."""

    def __call__(self, fn: Callable[[Connection], T], /) -> T: ...


def direct_writes(engine: Engine) -> Writes:
    def run(fn: Callable[[Connection], T], /) -> T:
        with write_transaction(engine) as conn:
            return fn(conn)

    return run


def create_project(conn: Connection, project_id: str, name: str, created: int, quota_bytes: int) -> ProjectRow | None:
    """None when a project with this id exists."""
    if conn.execute(select(projects.c.id).where(projects.c.id == project_id)).first() is not None:
        return None
    conn.execute(insert(projects).values(project_values(project_id, name, created, quota_bytes)))
    bump_access(conn)
    return _project(conn.execute(select(projects).where(projects.c.id == project_id)).one())


def list_projects(engine: Engine) -> list[ProjectRow]:
    with engine.connect() as conn:
        return [_project(r) for r in conn.execute(select(projects).order_by(projects.c.created, projects.c.id))]


def get_project(engine: Engine, project_id: str) -> ProjectRow | None:
    with engine.connect() as conn:
        row = conn.execute(select(projects).where(projects.c.id == project_id)).first()
    return _project(row) if row is not None else None


def update_project(conn: Connection, project_id: str, changes: Mapping[str, Any]) -> ProjectRow | None:
    """Change the given columns (default_metadata as a dict); None when there is no such project."""
    values = dict(changes)
    if "default_metadata" in values:
        values["default_metadata"] = _json(values["default_metadata"])
    if values and not conn.execute(update(projects).where(projects.c.id == project_id).values(values)).rowcount:
        return None
    bump_access(conn)
    row = conn.execute(select(projects).where(projects.c.id == project_id)).first()
    return _project(row) if row is not None else None


def insert_key(conn: Connection, values: Mapping[str, Any]) -> KeyRow | None:
    """None when the project does not exist."""
    row_values = dict(values)
    row_values["default_metadata"] = _json(row_values.get("default_metadata"))
    if conn.execute(select(projects.c.id).where(projects.c.id == row_values["project_id"])).first() is None:
        return None
    conn.execute(insert(api_keys).values(row_values))
    bump_access(conn)
    return _key(conn.execute(select(api_keys).where(api_keys.c.id == row_values["id"])).one())


def list_keys(engine: Engine, project_id: str) -> list[KeyRow]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(api_keys).where(api_keys.c.project_id == project_id).order_by(api_keys.c.created, api_keys.c.id)
        )
        return [_key(r) for r in rows]


def delete_key(conn: Connection, project_id: str, key_id: str) -> bool:
    deleted = conn.execute(delete(api_keys).where(api_keys.c.project_id == project_id, api_keys.c.id == key_id))
    if deleted.rowcount:
        bump_access(conn)
    return bool(deleted.rowcount)


@dataclass(frozen=True, slots=True)
class AccessSnapshot:
    """What a server caches to answer "who is this key" without a database round trip."""

    version: int
    projects: dict[str, ProjectRow]
    keys: dict[str, KeyRow]  # by hash


def read_access_version(engine: Engine) -> tuple[int, dict[str, int]]:
    """The access counter and every project's bytes in use (polled about once a second)."""
    with engine.connect() as conn:
        version = conn.execute(select(sequences.c.value).where(sequences.c.name == ACCESS_COUNTER)).scalar()
        usage = {pid: int(used) for pid, used in conn.execute(select(projects.c.id, projects.c.used_bytes))}
    return int(version or 0), usage


def read_access_snapshot(engine: Engine) -> AccessSnapshot:
    with engine.connect() as conn, conn.begin():
        version = conn.execute(select(sequences.c.value).where(sequences.c.name == ACCESS_COUNTER)).scalar()
        project_rows = {r.id: _project(r) for r in conn.execute(select(projects))}
        key_rows = {r.hash: _key(r) for r in conn.execute(select(api_keys))}
    return AccessSnapshot(int(version or 0), project_rows, key_rows)


def record_key_use(conn: Connection, last_used: Mapping[str, int], not_stored: Mapping[str, int]) -> None:
    """Flush what servers count in memory: keys' last use, and answers not stored per project."""
    for key_id, when in sorted(last_used.items()):
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used=when))
    for project_id, count in sorted(not_stored.items()):
        conn.execute(
            update(projects).where(projects.c.id == project_id).values(not_stored=projects.c.not_stored + count)
        )


# --- usage against quota ---------------------------------------------------------------------------


def lock_usage(conn: Connection, project_id: str) -> tuple[int, int] | None:
    """(used, quota) of a project, its row locked until the transaction ends (SQLite: the write lock is
    already held). None when there is no such project."""
    stmt = select(projects.c.used_bytes, projects.c.quota_bytes).where(projects.c.id == project_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return None if row is None else (int(row[0]), int(row[1]))


def add_usage(conn: Connection, project_id: str, delta: int) -> None:
    if delta:
        conn.execute(
            update(projects).where(projects.c.id == project_id).values(used_bytes=projects.c.used_bytes + delta)
        )


def ensure_projects(conn: Connection, project_ids: Iterable[str], created: int) -> None:
    """Create rows for projects written to that have none yet (the default project, tests' ad-hoc ids)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for project_id in sorted(set(project_ids)):
        conn.execute(
            dialect.insert(projects)
            .values(project_values(project_id, project_id, created))
            .on_conflict_do_nothing(index_elements=[projects.c.id])
        )


def usage_totals(engine: Engine) -> dict[str, tuple[int, int]]:
    """(used, quota) per project, read from the running totals (no scan)."""
    with engine.connect() as conn:
        rows = conn.execute(select(projects.c.id, projects.c.used_bytes, projects.c.quota_bytes))
        return {pid: (int(used), int(quota)) for pid, used, quota in rows}


def count_projects(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(projects)).scalar() or 0)


# The group commit's admission check runs on the DBAPI cursor the batch is written with (see
# store/completions.py): plain SQL, one lock, one lookup and one update per project in the batch.
_PROJECT_COLUMNS = tuple(project_values("", "", 0))
_IN_CHUNK = 256


@dataclass(slots=True)
class Admission:
    """What `admit_rows` decided for a batch. `refused`: ids of completions that do not fit their project's
    quota. `pending`: bytes of rows admitted without looking up which of their messages are kept already,
    per project (the batch fits even if none is): `settle_usage` adds them, with the messages the batch's
    insert reports as new, once the contents are written."""

    refused: set[str]
    pending: dict[str, int]


def admit_rows(
    cursor: Any,
    placeholder: str,
    postgres: bool,
    rows: list[tuple[str, str, int, list[str]]],
    sizes: Mapping[tuple[str, str], int],
    created: int,
) -> Admission:
    """Which completions of a batch do not fit their project's quota, with `used_bytes` moved by what the
    others add. `rows` are (id, project, row bytes, message digests) in batch order; `sizes` the bytes of
    each (project, digest) the batch would keep. A message already kept costs nothing more. A project
    whose quota holds the whole batch even with every message new (the usual case) is settled after the
    insert instead (`Admission.pending`), which saves looking its messages up."""
    p = placeholder
    by_project: dict[str, list[tuple[str, str, int, list[str]]]] = {}
    for row in rows:
        by_project.setdefault(row[1], []).append(row)
    admission = Admission(set(), {})
    for project_id, batch in sorted(by_project.items()):
        used, quota = _lock_usage_raw(cursor, p, postgres, project_id, created)
        row_bytes = sum(row[2] for row in batch)
        if used + row_bytes + sum(n for (pid, _), n in sizes.items() if pid == project_id) <= quota:
            admission.pending[project_id] = row_bytes
            continue
        kept = _kept_digests(cursor, p, project_id, [d for (pid, d) in sizes if pid == project_id])
        start = used
        for completion_id, _pid, bytes_, digests in batch:
            new = {d for d in digests if d not in kept}
            cost = bytes_ + sum(sizes[(project_id, d)] for d in new)
            if used + cost > quota:
                admission.refused.add(completion_id)
                continue
            used += cost
            kept |= new
        if used != start:
            cursor.execute(f"UPDATE projects SET used_bytes = {p} WHERE id = {p}", (used, project_id))
    return admission


def settle_usage(
    cursor: Any, placeholder: str, pending: Mapping[str, int], inserted: Mapping[tuple[str, str], int]
) -> None:
    """Add a batch's pending bytes to their projects' usage: its rows', and those of the messages its insert
    created (`inserted`: bytes by (project, digest)). The projects' rows are locked already."""
    p = placeholder
    for project_id, row_bytes in sorted(pending.items()):
        grown = row_bytes + sum(n for (pid, _), n in inserted.items() if pid == project_id)
        if grown:
            cursor.execute(f"UPDATE projects SET used_bytes = used_bytes + {p} WHERE id = {p}", (grown, project_id))


def _lock_usage_raw(cursor: Any, p: str, postgres: bool, project_id: str, created: int) -> tuple[int, int]:
    lock = " FOR UPDATE" if postgres else ""
    sql = f"SELECT used_bytes, quota_bytes FROM projects WHERE id = {p}{lock}"
    cursor.execute(sql, (project_id,))
    found = cursor.fetchone()
    if found is None:  # a project written to before anyone created it: the default one, ad-hoc ids
        values = project_values(project_id, project_id, created)
        cursor.execute(
            f"INSERT INTO projects ({', '.join(_PROJECT_COLUMNS)}) VALUES ({', '.join([p] * len(values))}) "
            "ON CONFLICT (id) DO NOTHING",
            tuple(values.values()),
        )
        cursor.execute(sql, (project_id,))
        found = cursor.fetchone()
    return int(found[0]), int(found[1])


def _kept_digests(cursor: Any, p: str, project_id: str, digests: list[str]) -> set[str]:
    kept: set[str] = set()
    wanted = sorted(digests)
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        chunk += chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))  # few distinct SQL texts
        cursor.execute(
            f"SELECT digest FROM message_contents WHERE project_id = {p} AND digest IN ({', '.join([p] * len(chunk))})",
            (project_id, *chunk),
        )
        kept.update(row[0] for row in cursor.fetchall())
    return kept
