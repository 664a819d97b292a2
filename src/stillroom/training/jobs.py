"""Fine-tuning jobs as OpenAI's /fine_tuning/jobs presents them. The API only creates and reads rows (and
marks them cancelled); workers move them along:

    validating_files -> queued -> running -> succeeded | failed | cancelled
    (any unfinished state -> cancelled, by the API; -> failed, by a worker)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from typing import Any

from stillroom.errors import BadRequestError, NotFoundError
from stillroom.store import files as file_store
from stillroom.store import jobs as store
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.wire.fine_tuning import MAX_SEED, parse_job_request
from stillroom.wire.ids import new_sortable_id
from stillroom.wire.pages import parse_limit, render_page

LIST_LIMIT = 20
EVENT_LIMIT = 20
CHECKPOINT_LIMIT = 10


def fine_tuned_model_name(base: str, project_id: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base}:{project_id}:{suffix or ''}:{job_id}"


def new_event(
    job_id: str, message: str, *, level: str = "info", type_: str = "message", data: dict[str, Any] | None = None
) -> store.EventRow:
    return store.EventRow(new_sortable_id("ft-event-"), job_id, int(time.time()), level, message, type_, data)


def render_job(job: store.JobRow) -> dict[str, Any]:
    method = job.method
    hyperparameters = job.hyperparameters or method["supervised"]["hyperparameters"]
    echoed = {"type": method["type"], method["type"]: {"hyperparameters": hyperparameters}}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": job.created_at,
        "model": job.model,
        "organization_id": job.project_id,
        "status": job.status,
        "seed": job.seed,
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": job.finished_at,
        "estimated_finish": job.estimated_finish,
        "hyperparameters": hyperparameters,
        "method": echoed,
        "result_files": job.result_files,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "integrations": None,
        "metadata": job.metadata,
        "suffix": job.suffix,
    }


def render_event(event: store.EventRow) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event.id,
        "created_at": event.created_at,
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }


def render_checkpoint(checkpoint: store.CheckpointRow) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint.id,
        "created_at": checkpoint.created_at,
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "step_number": checkpoint.step_number,
        "metrics": checkpoint.metrics,
        "fine_tuning_job_id": checkpoint.job_id,
        "result_files": checkpoint.result_files,  # Stillroom's: the checkpoint's zipped adapter, to download
    }


def create_job(
    engine: Engine, writes: Writes, project_id: str, body: dict[str, Any], base_models: Collection[str]
) -> dict[str, Any]:
    """Check the request and its files, and queue the job (status `validating_files`) for a worker."""
    request = parse_job_request(body)
    if request.model not in base_models:
        raise BadRequestError(
            f"Model {request.model!r} is not available for fine-tuning here. "
            f"Fine-tunable models: {', '.join(sorted(base_models)) or 'none'}.",
            param="model",
            code="model_not_available",
        )
    if request.validation_file is not None and request.validation_file == request.training_file:
        raise BadRequestError(
            "The validation file must not be the training file: training and validation data must not overlap.",
            param="validation_file",
            code="invalid_validation_file",
        )
    for param, file_id in (("training_file", request.training_file), ("validation_file", request.validation_file)):
        if file_id is None:
            continue
        row = file_store.get_file(engine, project_id, file_id) if "\x00" not in file_id else None
        if row is None:
            raise BadRequestError(f"Invalid file ID: {file_id}", param=param, code="invalid_file")
        if row.purpose != "fine-tune":
            raise BadRequestError(
                f"File {file_id} has purpose {row.purpose!r}; fine-tuning files need purpose 'fine-tune'.",
                param=param,
                code="invalid_file_purpose",
            )
    job = store.JobRow(
        id=new_sortable_id("ftjob-"),
        project_id=project_id,
        model=request.model,
        status="validating_files",
        training_file=request.training_file,
        validation_file=request.validation_file,
        suffix=request.suffix,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        method=request.method,
        hyperparameters=None,
        metadata=request.metadata,
        error=None,
        fine_tuned_model=None,
        result_files=[],
        trained_tokens=None,
        created_at=int(time.time()),
        finished_at=None,
        estimated_finish=None,
        worker_id=None,
        lease_expires_at=None,
        attempts=0,
    )
    store.insert_job(writes, job, [new_event(job.id, f"Created fine-tuning job: {job.id}")])
    return render_job(job)


def get_job_row(engine: Engine, project_id: str, job_id: str) -> store.JobRow:
    job = store.get_job(engine, project_id, job_id) if "\x00" not in job_id else None
    if job is None:
        raise NotFoundError(f"Could not find fine-tune: {job_id}", param="fine_tuning_job_id")
    return job


def retrieve_job(engine: Engine, project_id: str, job_id: str) -> dict[str, Any]:
    return render_job(get_job_row(engine, project_id, job_id))


def list_jobs(
    engine: Engine, project_id: str, *, metadata: dict[str, str] | None, after: str | None, limit: str | None
) -> dict[str, Any]:
    size = parse_limit(limit, LIST_LIMIT)
    _check_after(after)
    rows, has_more = store.list_jobs(engine, project_id, metadata=metadata, after=after, limit=size)
    return {"object": "list", "data": [render_job(j) for j in rows], "has_more": has_more}


def cancel_job(engine: Engine, writes: Writes, project_id: str, job_id: str) -> dict[str, Any]:
    job = get_job_row(engine, project_id, job_id)
    if job.status in store.TERMINAL:
        raise BadRequestError(
            f"Job {job_id} has already {job.status}; only unfinished jobs can be cancelled.",
            param="fine_tuning_job_id",
        )
    cancelled = store.cancel_job(
        writes, project_id, job_id, int(time.time()), new_event(job_id, "Job cancellation requested")
    )
    assert cancelled is not None
    return render_job(cancelled)


def list_events(
    engine: Engine, project_id: str, job_id: str, *, after: str | None, limit: str | None
) -> dict[str, Any]:
    get_job_row(engine, project_id, job_id)
    size = parse_limit(limit, EVENT_LIMIT)
    _check_after(after)
    events, has_more = store.list_events(engine, job_id, after=after, limit=size)
    return {"object": "list", "data": [render_event(e) for e in events], "has_more": has_more}


def list_checkpoints(
    engine: Engine, project_id: str, job_id: str, *, after: str | None, limit: str | None
) -> dict[str, Any]:
    get_job_row(engine, project_id, job_id)
    size = parse_limit(limit, CHECKPOINT_LIMIT)
    _check_after(after)
    rows, has_more = store.list_checkpoints(engine, job_id, after=after, limit=size)
    return render_page([render_checkpoint(c) for c in rows], has_more)


def _check_after(after: str | None) -> None:
    if after is not None and "\x00" in after:
        raise BadRequestError("Invalid 'after': NUL characters are not allowed.", param="after")
