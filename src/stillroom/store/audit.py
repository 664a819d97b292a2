"""The audit log: append in batches, read a project's events newest first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from stillroom.store.tables import audit_events


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: str
    project_id: str | None
    created: int
    actor: str
    action: str
    operation: str
    target: str
    outcome: str


def append_events(conn: Connection, events: Sequence[AuditEvent]) -> None:
    if events:
        conn.execute(insert(audit_events), [asdict(e) for e in events])


def list_events(
    engine: Engine, project_id: str | None, *, after: str | None, limit: int
) -> tuple[list[AuditEvent], bool]:
    """One page, newest first; `after` is the last id of the previous page. None: organization events."""
    a = audit_events.c
    stmt: Any = select(audit_events)
    stmt = stmt.where(a.project_id.is_(None) if project_id is None else a.project_id == project_id)
    if after is not None:
        stmt = stmt.where(a.id < after)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(a.id.desc()).limit(limit + 1)).all()
    return [AuditEvent(**row._mapping) for row in rows[:limit]], len(rows) > limit
