"""Evals, runs and output items as rows. Reads take an engine; writes are `fn(conn)` functions run in one
transaction by whoever owns writing (the server's single writer, or a worker's own transaction).

Runs are a work queue like fine-tuning jobs: a worker claims a queued run (or one whose lease ran out) with
a lease, renews it while working, and every later write names it (`worker_id = me`) and an active status,
so a cancelled run or a run taken over by another worker changes nothing once it is no longer held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from stillroom.store.db import write_transaction
from stillroom.store.tables import eval_output_items, eval_runs, evals

T = TypeVar("T")
ACTIVE = ("queued", "in_progress")


_EVAL_JSON = ("metadata", "data_source_config", "testing_criteria")
_RUN_JSON = ("data_source", "metadata", "error", "result_counts", "per_model_usage", "per_testing_criteria_results")
_ITEM_JSON = ("datasource_item", "results", "sample")


@dataclass(slots=True)
class EvalRow:
    id: str
    project_id: str
    name: str | None
    metadata: dict[str, str] | None
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    updated_at: int


@dataclass(slots=True)
class RunRow:
    id: str
    eval_id: str
    project_id: str
    name: str
    model: str | None
    status: str
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    error: dict[str, Any] | None
    result_counts: dict[str, int]
    per_model_usage: list[dict[str, Any]]
    per_testing_criteria_results: list[dict[str, Any]]
    created_at: int
    started_at: int | None
    finished_at: int | None
    worker_id: str | None
    lease_expires_at: float | None
    attempts: int


@dataclass(slots=True)
class OutputItemRow:
    id: str
    run_id: str
    eval_id: str
    datasource_item_id: int
    status: str
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]
    created_at: int


def _decode(values: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {k: orjson.loads(v) if k in names and v is not None else v for k, v in values.items()}


def _encode(values: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {k: orjson.dumps(v).decode() if k in names and v is not None else v for k, v in values.items()}


_EVAL_COLUMNS = tuple(evals.c[n] for n in EvalRow.__slots__)
_RUN_COLUMNS = tuple(eval_runs.c[n] for n in RunRow.__slots__)
_ITEM_COLUMNS = tuple(eval_output_items.c[n] for n in OutputItemRow.__slots__)


def _eval(row: Any) -> EvalRow:
    return EvalRow(**_decode(dict(row._mapping), _EVAL_JSON))


def _run(row: Any) -> RunRow:
    return RunRow(**_decode(dict(row._mapping), _RUN_JSON))


def _item(row: Any) -> OutputItemRow:
    return OutputItemRow(**_decode(dict(row._mapping), _ITEM_JSON))


# --- evals ---


def insert_eval(conn: Connection, row: EvalRow) -> None:
    conn.execute(insert(evals).values(_encode({n: getattr(row, n) for n in EvalRow.__slots__}, _EVAL_JSON)))


def get_eval(engine: Engine, project_id: str, eval_id: str) -> EvalRow | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_EVAL_COLUMNS).where(evals.c.project_id == project_id, evals.c.id == eval_id)
        ).first()
    return _eval(row) if row else None


def list_evals(
    engine: Engine, project_id: str, *, after: str | None, limit: int, descending: bool, by_updated: bool
) -> tuple[list[EvalRow], bool]:
    e = evals.c
    key = tuple_(e.updated_at, e.id) if by_updated else e.id
    stmt = select(*_EVAL_COLUMNS).where(e.project_id == project_id)
    with engine.connect() as conn:
        if after is not None:
            cursor = conn.execute(select(e.updated_at, e.id).where(e.project_id == project_id, e.id == after)).first()
            if cursor is not None:
                bound: Any = tuple_(cursor.updated_at, cursor.id) if by_updated else cursor.id
                stmt = stmt.where(key < bound if descending else key > bound)
        order = [e.updated_at, e.id] if by_updated else [e.id]
        stmt = stmt.order_by(*[c.desc() if descending else c.asc() for c in order]).limit(limit + 1)
        rows = [_eval(r) for r in conn.execute(stmt)]
    return rows[:limit], len(rows) > limit


def update_eval(conn: Connection, project_id: str, eval_id: str, values: dict[str, Any]) -> bool:
    changed = conn.execute(
        update(evals).where(evals.c.project_id == project_id, evals.c.id == eval_id).values(_encode(values, _EVAL_JSON))
    ).rowcount
    return bool(changed)


def delete_eval(conn: Connection, project_id: str, eval_id: str) -> bool:
    """The eval with its runs and their output items."""
    found = conn.execute(select(evals.c.id).where(evals.c.project_id == project_id, evals.c.id == eval_id)).first()
    if found is None:
        return False
    run_ids = select(eval_runs.c.id).where(eval_runs.c.eval_id == eval_id).scalar_subquery()
    conn.execute(delete(eval_output_items).where(eval_output_items.c.run_id.in_(run_ids)))
    conn.execute(delete(eval_runs).where(eval_runs.c.eval_id == eval_id))
    conn.execute(delete(evals).where(evals.c.id == eval_id))
    return True


# --- runs ---


def insert_run(conn: Connection, row: RunRow) -> None:
    conn.execute(insert(eval_runs).values(_encode({n: getattr(row, n) for n in RunRow.__slots__}, _RUN_JSON)))


def get_run(engine: Engine, project_id: str | None, eval_id: str | None, run_id: str) -> RunRow | None:
    r = eval_runs.c
    stmt = select(*_RUN_COLUMNS).where(r.id == run_id)
    if project_id is not None:
        stmt = stmt.where(r.project_id == project_id)
    if eval_id is not None:
        stmt = stmt.where(r.eval_id == eval_id)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return _run(row) if row else None


def list_runs(
    engine: Engine,
    project_id: str,
    eval_id: str,
    *,
    status: str | None,
    after: str | None,
    limit: int,
    descending: bool,
) -> tuple[list[RunRow], bool]:
    r = eval_runs.c
    stmt = select(*_RUN_COLUMNS).where(r.project_id == project_id, r.eval_id == eval_id)
    return _id_page(engine, stmt, r, _run, status=status, after=after, limit=limit, descending=descending)


def _id_page(
    engine: Engine,
    stmt: Select[Any],
    columns: Any,
    convert: Callable[[Any], T],
    *,
    status: str | None,
    after: str | None,
    limit: int,
    descending: bool,
) -> tuple[list[T], bool]:
    """One keyset page in id order of runs or output items (`columns`: the table's `.c`, with `id` and
    `status`), optionally of one status, and whether more follow."""
    if status is not None:
        stmt = stmt.where(columns.status == status)
    if after is not None:
        stmt = stmt.where(columns.id < after if descending else columns.id > after)
    stmt = stmt.order_by(columns.id.desc() if descending else columns.id.asc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = [convert(row) for row in conn.execute(stmt)]
    return rows[:limit], len(rows) > limit


def cancel_run(conn: Connection, project_id: str, eval_id: str, run_id: str, now: int) -> bool:
    """Mark an unfinished run canceled (its worker notices at its next heartbeat)."""
    r = eval_runs.c
    changed = conn.execute(
        update(eval_runs)
        .where(r.project_id == project_id, r.eval_id == eval_id, r.id == run_id, r.status.in_(ACTIVE))
        .values(status="canceled", finished_at=now)
    ).rowcount
    return bool(changed)


def delete_run(conn: Connection, project_id: str, eval_id: str, run_id: str) -> bool:
    r = eval_runs.c
    found = conn.execute(select(r.id).where(r.project_id == project_id, r.eval_id == eval_id, r.id == run_id)).first()
    if found is None:
        return False
    conn.execute(delete(eval_output_items).where(eval_output_items.c.run_id == run_id))
    conn.execute(delete(eval_runs).where(r.id == run_id))
    return True


# --- the queue ---


def _claimable(now: float) -> ColumnElement[bool]:
    r = eval_runs.c
    return and_(r.status.in_(ACTIVE), or_(r.worker_id.is_(None), r.lease_expires_at < now))


def claim_run(
    engine: Engine, worker_id: str, *, lease_seconds: float, now: float, only: Sequence[str] | None = None
) -> RunRow | None:
    """Take the oldest waiting run (or one whose worker's lease ran out), of `only` when given; returned as
    it was before the claim."""
    r = eval_runs.c
    with write_transaction(engine) as conn:
        stmt = select(*_RUN_COLUMNS).where(_claimable(now)).order_by(r.id).limit(1)
        if only is not None:
            stmt = stmt.where(r.id.in_(list(only)))
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        row = conn.execute(stmt).first()
        if row is None:
            return None
        run = _run(row)
        won = conn.execute(
            update(eval_runs)
            .where(r.id == run.id, _claimable(now))
            .values(
                worker_id=worker_id,
                lease_expires_at=now + lease_seconds,
                attempts=r.attempts + 1,
                status="in_progress",
                started_at=func.coalesce(r.started_at, int(now)),
            )
        ).rowcount
    return run if won == 1 else None


def _held(run_id: str, worker_id: str) -> ColumnElement[bool]:
    r = eval_runs.c
    return and_(r.id == run_id, r.worker_id == worker_id, r.status.in_(ACTIVE))


def renew_run_lease(engine: Engine, run_id: str, worker_id: str, *, lease_seconds: float, now: float) -> bool:
    with write_transaction(engine) as conn:
        changed = conn.execute(
            update(eval_runs).where(_held(run_id, worker_id)).values(lease_expires_at=now + lease_seconds)
        ).rowcount
    return bool(changed)


def save_progress(
    engine: Engine, run_id: str, worker_id: str, values: dict[str, Any], items: Sequence[OutputItemRow]
) -> bool:
    """Output items and the counts so far, in one transaction; False (writing nothing) once not held."""
    with write_transaction(engine) as conn:
        changed = conn.execute(
            update(eval_runs).where(_held(run_id, worker_id)).values(_encode(values, _RUN_JSON))
        ).rowcount
        if not changed:
            return False
        if items:
            conn.execute(
                insert(eval_output_items),
                [_encode({n: getattr(i, n) for n in OutputItemRow.__slots__}, _ITEM_JSON) for i in items],
            )
    return True


def finish_run(engine: Engine, run_id: str, worker_id: str, values: dict[str, Any]) -> bool:
    with write_transaction(engine) as conn:
        final = {**values, "worker_id": None, "lease_expires_at": None}
        changed = conn.execute(
            update(eval_runs).where(_held(run_id, worker_id)).values(_encode(final, _RUN_JSON))
        ).rowcount
    return bool(changed)


def graded_item_ids(engine: Engine, run_id: str) -> set[int]:
    """Items a run already has output for (a run taken over resumes after them)."""
    with engine.connect() as conn:
        rows = conn.execute(select(eval_output_items.c.datasource_item_id).where(eval_output_items.c.run_id == run_id))
        return {int(r[0]) for r in rows}


# --- output items ---


def list_output_items(
    engine: Engine, run_id: str, *, status: str | None, after: str | None, limit: int, descending: bool
) -> tuple[list[OutputItemRow], bool]:
    o = eval_output_items.c
    stmt = select(*_ITEM_COLUMNS).where(o.run_id == run_id)
    return _id_page(engine, stmt, o, _item, status=status, after=after, limit=limit, descending=descending)


def all_output_items(engine: Engine, run_id: str) -> list[OutputItemRow]:
    o = eval_output_items.c
    with engine.connect() as conn:
        return [
            _item(r)
            for r in conn.execute(select(*_ITEM_COLUMNS).where(o.run_id == run_id).order_by(o.datasource_item_id))
        ]


def get_output_item(engine: Engine, run_id: str, item_id: str) -> OutputItemRow | None:
    o = eval_output_items.c
    with engine.connect() as conn:
        row = conn.execute(select(*_ITEM_COLUMNS).where(o.run_id == run_id, o.id == item_id)).first()
    return _item(row) if row else None


def count_eval_rows(engine: Engine) -> dict[str, int]:
    """Row counts of the eval tables (what error-path tests check did not change)."""
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
            for t in (evals, eval_runs, eval_output_items)
        }
