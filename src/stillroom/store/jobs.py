"""Fine-tuning jobs as rows: insert, read, list, cancel; events and checkpoints; the models that succeeded jobs
register. The work queue (claims, leases, a worker's guarded writes, winding down) is `store/job_queue.py`.

A cancel keeps a lease on a job that a worker had taken up, for its wind-down (`store/job_queue.py`): its
holder's, or an expired one (0) when no worker held it; a job cancelled before any worker ran it has nothing to
wind down and no lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from stillroom.store.projects import Writes
from stillroom.store.tables import (
    fine_tuned_models,
    fine_tuning_checkpoints,
    fine_tuning_job_events,
    fine_tuning_job_metadata,
    fine_tuning_jobs,
)

ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
_JSON = ("method", "hyperparameters", "metadata", "error", "result_files")


@dataclass(slots=True)
class JobRow:
    id: str
    project_id: str
    model: str
    status: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    method: dict[str, Any]
    hyperparameters: dict[str, Any] | None
    metadata: dict[str, str] | None
    error: dict[str, Any] | None
    fine_tuned_model: str | None
    result_files: list[str]
    trained_tokens: int | None
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    worker_id: str | None
    lease_expires_at: float | None
    attempts: int


@dataclass(slots=True)
class EventRow:
    id: str
    job_id: str
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class CheckpointRow:
    id: str
    job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, Any]
    fine_tuned_model_checkpoint: str
    result_files: list[str] = field(default_factory=list)  # its zipped adapter (purpose fine-tune-results)


@dataclass(slots=True)
class ModelRow:
    name: str
    project_id: str
    job_id: str
    base_model: str
    gguf_file: str
    created_at: int


JOB_COLUMNS = tuple(fine_tuning_jobs.c[name] for name in JobRow.__slots__)


def job_from_row(row: Any) -> JobRow:
    values = dict(row._mapping)
    for name in _JSON:
        if values[name] is not None:
            values[name] = orjson.loads(values[name])
    return JobRow(**values)


def encode_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: orjson.dumps(v).decode() if k in _JSON and v is not None else v for k, v in values.items()}


def insert_job(writes: Writes, job: JobRow, events: Sequence[EventRow]) -> None:
    def run(conn: Connection) -> None:
        conn.execute(insert(fine_tuning_jobs).values(encode_values({n: getattr(job, n) for n in JobRow.__slots__})))
        if job.metadata:
            pairs = [
                {"job_id": job.id, "project_id": job.project_id, "key": k, "value": v} for k, v in job.metadata.items()
            ]
            conn.execute(insert(fine_tuning_job_metadata), pairs)
        insert_events(conn, events)

    writes(run)


def get_job(engine: Engine, project_id: str | None, job_id: str) -> JobRow | None:
    stmt = select(*JOB_COLUMNS).where(fine_tuning_jobs.c.id == job_id)
    if project_id is not None:
        stmt = stmt.where(fine_tuning_jobs.c.project_id == project_id)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return job_from_row(row) if row else None


def list_jobs(
    engine: Engine, project_id: str, *, metadata: dict[str, str] | None, after: str | None, limit: int
) -> tuple[list[JobRow], bool]:
    """Newest first. `metadata` pairs must all match; `None` selects jobs without metadata."""
    j = fine_tuning_jobs.c
    stmt = select(*JOB_COLUMNS).where(j.project_id == project_id)
    if metadata is None:
        stmt = stmt.where(j.metadata.is_(None))
    for key, value in (metadata or {}).items():
        m = fine_tuning_job_metadata.c
        stmt = stmt.where(exists().where(m.project_id == project_id, m.key == key, m.value == value, m.job_id == j.id))
    if after is not None:
        stmt = stmt.where(j.id < after)
    with engine.connect() as conn:
        rows = [job_from_row(r) for r in conn.execute(stmt.order_by(j.id.desc()).limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def cancel_job(writes: Writes, project_id: str, job_id: str, now: int, event: EventRow) -> JobRow | None:
    """Mark an unfinished job cancelled (its worker notices at its next heartbeat); a finished one is returned
    unchanged. None when there is no such job."""
    j = fine_tuning_jobs.c
    ran = or_(j.attempts > 0, j.worker_id.is_not(None))  # something may be left to wind down (module docstring)
    lease = case((ran, func.coalesce(j.lease_expires_at, 0.0)), else_=None)

    def run(conn: Connection) -> JobRow | None:
        changed = conn.execute(
            update(fine_tuning_jobs)
            .where(j.project_id == project_id, j.id == job_id, j.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=now, estimated_finish=None, lease_expires_at=lease)
        ).rowcount
        if changed:
            insert_events(conn, [event])
        row = conn.execute(select(*JOB_COLUMNS).where(j.project_id == project_id, j.id == job_id)).first()
        return job_from_row(row) if row else None

    return writes(run)


def insert_events(conn: Connection, events: Sequence[EventRow]) -> None:
    if events:
        conn.execute(
            insert(fine_tuning_job_events),
            [
                {
                    "id": e.id,
                    "job_id": e.job_id,
                    "created_at": e.created_at,
                    "level": e.level,
                    "message": e.message,
                    "type": e.type,
                    "data": orjson.dumps(e.data).decode() if e.data is not None else None,
                }
                for e in events
            ],
        )


def list_events(engine: Engine, job_id: str, *, after: str | None, limit: int) -> tuple[list[EventRow], bool]:
    """Newest first, like OpenAI's event list."""
    e = fine_tuning_job_events.c
    stmt = select(e.id, e.job_id, e.created_at, e.level, e.message, e.type, e.data).where(e.job_id == job_id)
    if after is not None:
        stmt = stmt.where(e.id < after)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(e.id.desc()).limit(limit + 1)).all()
    events = [
        EventRow(r.id, r.job_id, r.created_at, r.level, r.message, r.type, orjson.loads(r.data) if r.data else None)
        for r in rows
    ]
    return events[:limit], len(events) > limit


def list_checkpoints(engine: Engine, job_id: str, *, after: str | None, limit: int) -> tuple[list[CheckpointRow], bool]:
    """Newest first."""
    c = fine_tuning_checkpoints.c
    stmt = select(
        c.id, c.job_id, c.created_at, c.step_number, c.metrics, c.fine_tuned_model_checkpoint, c.result_files
    ).where(c.job_id == job_id)
    if after is not None:
        stmt = stmt.where(c.id < after)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(c.id.desc()).limit(limit + 1)).all()
    found = [
        CheckpointRow(r.id, r.job_id, r.created_at, r.step_number, orjson.loads(r.metrics), r[5], orjson.loads(r[6]))
        for r in rows
    ]
    return found[:limit], len(found) > limit


def checkpoint_file_ids(conn: Connection, job_id: str) -> list[str]:
    c = fine_tuning_checkpoints.c
    rows = conn.execute(select(c.result_files).where(c.job_id == job_id, c.result_files != "[]")).scalars()
    return [file_id for files in rows for file_id in orjson.loads(files)]


def clear_checkpoint_files(writes: Writes, job_id: str) -> list[str]:
    """Unlink the job's checkpoints from their files (the caller deletes them) and return those file ids; the
    checkpoints and their metrics stay."""
    c = fine_tuning_checkpoints.c

    def run(conn: Connection) -> list[str]:
        found = checkpoint_file_ids(conn, job_id)
        if found:
            conn.execute(update(fine_tuning_checkpoints).where(c.job_id == job_id).values(result_files="[]"))
        return found

    return writes(run)


def add_events(writes: Writes, events: Sequence[EventRow]) -> None:
    writes(lambda conn: insert_events(conn, events))


# --- fine-tuned models ---

_MODEL_COLUMNS = tuple(fine_tuned_models.c[name] for name in ModelRow.__slots__)


def get_model(engine: Engine, name: str) -> ModelRow | None:
    with engine.connect() as conn:
        row = conn.execute(select(*_MODEL_COLUMNS).where(fine_tuned_models.c.name == name)).first()
    return ModelRow(*row) if row else None


def list_models(engine: Engine, project_id: str | None = None) -> list[ModelRow]:
    stmt = select(*_MODEL_COLUMNS).order_by(fine_tuned_models.c.created_at, fine_tuned_models.c.name)
    if project_id is not None:
        stmt = stmt.where(fine_tuned_models.c.project_id == project_id)
    with engine.connect() as conn:
        return [ModelRow(*row) for row in conn.execute(stmt)]


def count_jobs(engine: Engine) -> dict[str, int]:
    """Row counts of the job tables (what error-path tests check did not change)."""
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
            for t in (fine_tuning_jobs, fine_tuning_job_events, fine_tuning_checkpoints, fine_tuned_models)
        }
