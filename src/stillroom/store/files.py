"""File rows (the bytes live in a FileStorage): insert, get, list newest first, delete, bytes per project."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, insert, select

from stillroom.store.projects import Writes
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


def insert_file(writes: Writes, row: FileRow) -> None:
    writes(lambda conn: conn.execute(insert(files).values({name: getattr(row, name) for name in FileRow.__slots__})))


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
    row = writes(
        lambda conn: conn.execute(
            delete(files).where(files.c.project_id == project_id, files.c.id == file_id).returning(*_COLUMNS)
        ).first()
    )
    return FileRow(*row) if row else None


def file_bytes_by_project(engine: Engine) -> dict[str, int]:
    """Bytes of kept files per project (for storage accounting)."""
    with engine.connect() as conn:
        rows = conn.execute(select(files.c.project_id, func.sum(files.c.bytes)).group_by(files.c.project_id))
        return {project: int(total or 0) for project, total in rows}


def count_files(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(files)).scalar() or 0)
