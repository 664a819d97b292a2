"""/fine_tuning/jobs (create, list, retrieve, cancel, events, checkpoints) and /fine_tuning/datasets
(Stillroom's Distill: a dataset file from a selection of stored completions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.responses import Response

from stillroom.api.deps import Caller, Svc, json_response, read_body
from stillroom.distill.dataset import build_dataset
from stillroom.distill.request import parse_dataset_request
from stillroom.errors import BadRequestError
from stillroom.training import jobs
from stillroom.wire.chat import parse_json_object, validate_metadata

router = APIRouter()
After = Annotated[str | None, Query(description="Return items after this id (lists are newest first)")]
Limit = Annotated[str | None, Query(description="Items per page, 1..100")]


def _json_body(schema_name: str) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "title": schema_name}}},
        }
    }


@router.post("/fine_tuning/jobs", openapi_extra=_json_body("CreateFineTuningJobRequest"))
async def create_fine_tuning_job(request: Request, principal: Caller, services: Svc) -> Response:
    body = parse_json_object(await read_body(request, services.settings.max_body_bytes))
    base_models = list(services.registry.models)  # local models train here, the others upstream
    job = await run_in_threadpool(
        jobs.create_job, services.engine, services.writes, principal.project_id, body, base_models
    )
    return json_response(job)


@router.get("/fine_tuning/jobs")
async def list_fine_tuning_jobs(
    request: Request, principal: Caller, services: Svc, after: After = None, limit: Limit = None
) -> Response:
    """Newest first; filter with `metadata[key]=value` pairs, or `metadata=null` for jobs without any."""
    page = await run_in_threadpool(
        jobs.list_jobs,
        services.engine,
        principal.project_id,
        metadata=_metadata_filter(request.query_params),
        after=after,
        limit=limit,
    )
    return json_response(page)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}")
async def retrieve_fine_tuning_job(fine_tuning_job_id: str, principal: Caller, services: Svc) -> Response:
    job = await run_in_threadpool(jobs.retrieve_job, services.engine, principal.project_id, fine_tuning_job_id)
    return json_response(job)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel")
async def cancel_fine_tuning_job(fine_tuning_job_id: str, principal: Caller, services: Svc) -> Response:
    job = await run_in_threadpool(
        jobs.cancel_job, services.engine, services.writes, principal.project_id, fine_tuning_job_id
    )
    return json_response(job)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events")
async def list_fine_tuning_events(
    fine_tuning_job_id: str, principal: Caller, services: Svc, after: After = None, limit: Limit = None
) -> Response:
    page = await run_in_threadpool(
        jobs.list_events, services.engine, principal.project_id, fine_tuning_job_id, after=after, limit=limit
    )
    return json_response(page)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
async def list_fine_tuning_job_checkpoints(
    fine_tuning_job_id: str, principal: Caller, services: Svc, after: After = None, limit: Limit = None
) -> Response:
    page = await run_in_threadpool(
        jobs.list_checkpoints, services.engine, principal.project_id, fine_tuning_job_id, after=after, limit=limit
    )
    return json_response(page)


@router.post("/fine_tuning/datasets", openapi_extra=_json_body("CreateDatasetRequest"))
async def create_fine_tuning_dataset(request: Request, principal: Caller, services: Svc) -> Response:
    """Distill: stored completions (a selection) -> a training file and optionally a validation file."""
    selection, options = parse_dataset_request(
        parse_json_object(await read_body(request, services.settings.max_body_bytes))
    )
    dataset = await run_in_threadpool(
        build_dataset,
        services.engine,
        services.writes,
        services.storage,
        principal.project_id,
        selection,
        options,
        max_bytes=services.settings.max_file_bytes,
    )
    return json_response(dataset.render())


def _metadata_filter(query: QueryParams) -> dict[str, str] | None:
    pairs: dict[str, str] = {}
    for name, value in query.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[9:-1]] = value
        elif name == "metadata":
            if value == "null":
                return None
            raise BadRequestError("Filter metadata as metadata[key]=value pairs, or metadata=null.", param="metadata")
    validate_metadata(pairs)
    return pairs
