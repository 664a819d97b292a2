"""File rows (the bytes live in a FileStorage): insert, get, list newest first, delete, bytes per project.

A file's bytes count against its project's quota: inserting and deleting a row move the project's running
total (`projects.used_bytes`) in the same transaction, the project's row locked first (store/projects.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, insert, select

from stillroom.store.projects import Writes, add_usage, ensure_projects, lock_usage
from stillroom.store.tables import files


@dataclass(slots=True)
class FileRow:
    id: str
    project_id: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None
    status: str
    storage_key: str


_COLUMNS = tuple(files.c[name] for name in FileRow.__slots__)


def insert_file(writes: Writes, row: FileRow) -> tuple[int, int] | None:
    """Insert the row and count its bytes; or, when they would take the project past its quota, write nothing
    and return the project's (used, quota) bytes."""

    def run(conn: Connection) -> tuple[int, int] | None:
        ensure_projects(conn, [row.project_id], row.created_at)
        usage = lock_usage(conn, row.project_id)
        assert usage is not None  # ensured above
        used, quota = usage
        if used + row.bytes > quota:
            return used, quota
        conn.execute(insert(files).values({name: getattr(row, name) for name in FileRow.__slots__}))
        add_usage(conn, row.project_id, row.bytes)
        return None

    return writes(run)


def get_file(engine: Engine, project_id: str, file_id: str) -> FileRow | None:
    with engine.connect() as conn:
        row = conn.execute(select(*_COLUMNS).where(files.c.project_id == project_id, files.c.id == file_id)).first()
    return FileRow(*row) if row else None


def list_files(
    engine: Engine, project_id: str, *, purpose: str | None, after: str | None, limit: int, descending: bool
) -> tuple[list[FileRow], bool]:
    """One keyset page in id (= creation) order, and whether more follow."""
    stmt = select(*_COLUMNS).where(files.c.project_id == project_id)
    if purpose is not None:
        stmt = stmt.where(files.c.purpose == purpose)
    if after is not None:
        stmt = stmt.where(files.c.id < after if descending else files.c.id > after)
    stmt = stmt.order_by(files.c.id.desc() if descending else files.c.id.asc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = [FileRow(*row) for row in conn.execute(stmt)]
    return rows[:limit], len(rows) > limit


def delete_file(writes: Writes, project_id: str, file_id: str) -> FileRow | None:
    """Delete the row and return it (the caller then frees the bytes); None when there was none."""

    def run(conn: Connection) -> FileRow | None:
        lock_usage(conn, project_id)
        found = conn.execute(
            delete(files).where(files.c.project_id == project_id, files.c.id == file_id).returning(*_COLUMNS)
        ).first()
        if found is None:
            return None
        add_usage(conn, project_id, -int(found.bytes))
        return FileRow(*found)

    return writes(run)


def file_bytes_by_project(engine: Engine) -> dict[str, int]:
    """Bytes of kept files per project (for storage accounting)."""
    with engine.connect() as conn:
        rows = conn.execute(select(files.c.project_id, func.sum(files.c.bytes)).group_by(files.c.project_id))
        return {project: int(total or 0) for project, total in rows}


def count_files(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(files)).scalar() or 0)
