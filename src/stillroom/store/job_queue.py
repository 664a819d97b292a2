"""The fine-tuning work queue: workers claim job rows with a lease, renew it with a heartbeat, and change a job
only while they hold it.

Claims: PostgreSQL picks a row with `FOR UPDATE SKIP LOCKED`, so workers never wait on each other's row; SQLite
runs the whole claim in one `BEGIN IMMEDIATE` transaction, and the UPDATE repeats the claimability test, so the
row count says whether this worker won it. Every later write by a worker names it (`worker_id = me`) and an
active status, so a worker whose lease was taken over, or whose job was cancelled, changes nothing.

Winding down: a job cancelled after a worker took it up (a run may have left checkpoint files, or an upstream
job) keeps a lease (`store/jobs.py` `cancel_job`): its holder's, or an expired one when no worker held it. The
holder winds it down when it notices the cancel (`hold_wind_down`); otherwise, once that lease has run out, any
worker claims the wind-down (`claim_wind_down`), does it and ends it (`end_wind_down`: no worker, no lease).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, and_, delete, insert, or_, select, update

from stillroom.store.jobs import (
    ACTIVE,
    JOB_COLUMNS,
    CheckpointRow,
    EventRow,
    JobRow,
    ModelRow,
    checkpoint_file_ids,
    encode_values,
    insert_events,
    job_from_row,
)
from stillroom.store.projects import Writes
from stillroom.store.tables import fine_tuned_models, fine_tuning_checkpoints, fine_tuning_jobs


@dataclass(slots=True)
class Finish:
    """What a worker writes when its job ends, in one transaction."""

    values: dict[str, Any]
    events: list[EventRow] = field(default_factory=list)
    model: ModelRow | None = None


def _claim(
    writes: Writes, worker_id: str, claimable: ColumnElement[bool], lease_seconds: float, now: float
) -> JobRow | None:
    j = fine_tuning_jobs.c

    def run(conn: Connection) -> JobRow | None:
        stmt = select(*JOB_COLUMNS).where(claimable).order_by(j.id).limit(1)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        row = conn.execute(stmt).first()
        if row is None:
            return None
        job = job_from_row(row)
        won = conn.execute(
            update(fine_tuning_jobs)
            .where(j.id == job.id, claimable)
            .values(worker_id=worker_id, lease_expires_at=now + lease_seconds)
        ).rowcount
        return job if won == 1 else None

    return writes(run)


def _claimable(now: float) -> ColumnElement[bool]:
    j = fine_tuning_jobs.c
    return and_(j.status.in_(ACTIVE), or_(j.worker_id.is_(None), j.lease_expires_at < now))


def claim_job(writes: Writes, worker_id: str, *, lease_seconds: float, now: float) -> JobRow | None:
    """Take the oldest job that is waiting, or whose worker's lease ran out. The row comes back as it was
    before the claim (so the caller sees a lost worker's id); the database already names this worker."""
    return _claim(writes, worker_id, _claimable(now), lease_seconds, now)


def _winding_down(now: float) -> ColumnElement[bool]:
    j = fine_tuning_jobs.c
    return and_(j.status == "cancelled", j.lease_expires_at.is_not(None), j.lease_expires_at < now)


def claim_wind_down(writes: Writes, worker_id: str, *, lease_seconds: float, now: float) -> JobRow | None:
    """Take the oldest cancelled job whose wind-down no worker holds, as `claim_job` does."""
    return _claim(writes, worker_id, _winding_down(now), lease_seconds, now)


def hold_wind_down(writes: Writes, job_id: str, worker_id: str, *, lease_seconds: float, now: float) -> bool:
    """The worker that held a job when it was cancelled keeps it to wind it down; False if another took it."""
    j = fine_tuning_jobs.c
    stmt = (
        update(fine_tuning_jobs)
        .where(j.id == job_id, j.worker_id == worker_id, j.status == "cancelled", j.lease_expires_at.is_not(None))
        .values(lease_expires_at=now + lease_seconds)
    )
    return bool(writes(lambda conn: conn.execute(stmt).rowcount))


def end_wind_down(writes: Writes, job_id: str, worker_id: str) -> bool:
    j = fine_tuning_jobs.c
    stmt = (
        update(fine_tuning_jobs)
        .where(j.id == job_id, j.worker_id == worker_id, j.status == "cancelled")
        .values(worker_id=None, lease_expires_at=None)
    )
    return bool(writes(lambda conn: conn.execute(stmt).rowcount))


def _held(job_id: str, worker_id: str) -> ColumnElement[bool]:
    j = fine_tuning_jobs.c
    return and_(j.id == job_id, j.worker_id == worker_id, j.status.in_(ACTIVE))


def renew_lease(writes: Writes, job_id: str, worker_id: str, *, lease_seconds: float, now: float) -> bool:
    """Heartbeat: push the lease forward. False once the job is no longer this worker's to run (cancelled,
    or taken over after a missed lease)."""
    stmt = update(fine_tuning_jobs).where(_held(job_id, worker_id)).values(lease_expires_at=now + lease_seconds)
    return bool(writes(lambda conn: conn.execute(stmt).rowcount))


def update_held_job(
    writes: Writes, job_id: str, worker_id: str, values: dict[str, Any], events: Sequence[EventRow] = ()
) -> bool:
    """Change a job this worker holds, with its events, in one transaction; False if it no longer holds it."""

    def run(conn: Connection) -> bool:
        if values:
            stmt = update(fine_tuning_jobs).where(_held(job_id, worker_id)).values(encode_values(values))
            changed = conn.execute(stmt).rowcount
        else:
            changed = len(conn.execute(select(fine_tuning_jobs.c.id).where(_held(job_id, worker_id))).all())
        if changed:
            insert_events(conn, events)
        return bool(changed)

    return writes(run)


def add_held_checkpoint(writes: Writes, worker_id: str, checkpoint: CheckpointRow, event: EventRow) -> bool:
    def run(conn: Connection) -> bool:
        held = conn.execute(select(fine_tuning_jobs.c.id).where(_held(checkpoint.job_id, worker_id))).first()
        if held is None:
            return False
        conn.execute(
            insert(fine_tuning_checkpoints).values(
                id=checkpoint.id,
                job_id=checkpoint.job_id,
                created_at=checkpoint.created_at,
                step_number=checkpoint.step_number,
                metrics=orjson.dumps(checkpoint.metrics).decode(),
                fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
                result_files=orjson.dumps(checkpoint.result_files).decode(),
            )
        )
        insert_events(conn, [event])
        return True

    return writes(run)


def finish_held_job(writes: Writes, job_id: str, worker_id: str, finish: Finish) -> bool:
    """End a job this worker holds: final values, events, and (on success) the model it made, in one
    transaction. False, writing nothing, if the job was cancelled or taken over meanwhile."""
    values = encode_values({**finish.values, "worker_id": None, "lease_expires_at": None})

    def run(conn: Connection) -> bool:
        if not conn.execute(update(fine_tuning_jobs).where(_held(job_id, worker_id)).values(values)).rowcount:
            return False
        insert_events(conn, finish.events)
        if finish.model is not None:
            m = finish.model
            conn.execute(
                insert(fine_tuned_models).values(
                    name=m.name,
                    project_id=m.project_id,
                    job_id=m.job_id,
                    base_model=m.base_model,
                    gguf_file=m.gguf_file,
                    created_at=m.created_at,
                )
            )
        return True

    return writes(run)


def delete_held_checkpoints(writes: Writes, job_id: str, worker_id: str) -> list[str]:
    """Drop the checkpoints of an earlier run of a job this worker holds (its new run starts from the base
    again) and return their file ids for the caller to delete; nothing when it no longer holds the job."""

    def run(conn: Connection) -> list[str]:
        if conn.execute(select(fine_tuning_jobs.c.id).where(_held(job_id, worker_id))).first() is None:
            return []
        found = checkpoint_file_ids(conn, job_id)
        conn.execute(delete(fine_tuning_checkpoints).where(fine_tuning_checkpoints.c.job_id == job_id))
        return found

    return writes(run)
