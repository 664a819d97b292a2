"""/evals (create, list, retrieve, update, delete), runs (create, list, retrieve, cancel on both paths the
SDKs use, delete), output items (list, retrieve), and the grader test routes under /fine_tuning/alpha.
Azure's `aoai-evals: preview` header is accepted and not required. Stillroom adds
`/evals/{eval_id}/comparison`: the eval's runs side by side per criterion, with confidence intervals."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from stillroom.api.deps import After, Caller, Limit, Order, Svc, json_response, read_body
from stillroom.errors import NotFoundError
from stillroom.evals import evaluations as ev
from stillroom.evals import trials
from stillroom.evals.graders import GradingContext
from stillroom.evals.reports import compare_eval_runs
from stillroom.evals.sampling import RegistrySampler
from stillroom.services import Services
from stillroom.wire.chat import parse_json_object

router = APIRouter()


def _body(name: str) -> dict[str, Any]:
    schema = {"type": "object", "title": name}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _created(obj: dict[str, Any]) -> Response:
    response = json_response(obj)
    response.status_code = 201
    return response


def _report_base(request: Request) -> str:
    return str(request.base_url)


def _is_model(services: Services) -> Any:
    def check(name: str) -> bool:
        try:
            services.registry.get(name)
        except NotFoundError:
            return False
        return True

    return check


async def _json(request: Request, services: Services) -> dict[str, Any]:
    return parse_json_object(await read_body(request, services.settings.max_body_bytes))


@router.post("/evals", openapi_extra=_body("CreateEvalRequest"))
async def create_eval(request: Request, principal: Caller, services: Svc) -> Response:
    body = await _json(request, services)
    return _created(await run_in_threadpool(ev.create_eval, body, principal.project_id, services.writes))


@router.get("/evals")
async def list_evals(
    principal: Caller,
    services: Svc,
    after: After = None,
    limit: Limit = None,
    order: Order = None,
    order_by: Annotated[str | None, Query(description="created_at (default) or updated_at")] = None,
) -> Response:
    page = await run_in_threadpool(
        ev.list_evals, services.engine, principal.project_id, after=after, limit=limit, order=order, order_by=order_by
    )
    return json_response(page)


@router.get("/evals/{eval_id}")
async def get_eval(eval_id: str, principal: Caller, services: Svc) -> Response:
    row = await run_in_threadpool(ev.get_eval_row, services.engine, principal.project_id, eval_id)
    return json_response(ev.render_eval(row))


@router.post("/evals/{eval_id}", openapi_extra=_body("UpdateEvalRequest"))
async def update_eval(eval_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    body = await _json(request, services)
    found = await run_in_threadpool(
        ev.update_eval, services.engine, principal.project_id, eval_id, body, services.writes
    )
    return json_response(found)


@router.delete("/evals/{eval_id}")
async def delete_eval(eval_id: str, principal: Caller, services: Svc) -> Response:
    return json_response(await run_in_threadpool(ev.delete_eval, principal.project_id, eval_id, services.writes))


@router.post("/evals/{eval_id}/runs", openapi_extra=_body("CreateEvalRunRequest"))
async def create_eval_run(eval_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    body = await _json(request, services)
    run = await run_in_threadpool(
        ev.create_run,
        services.engine,
        principal.project_id,
        eval_id,
        body,
        services.writes,
        is_model=_is_model(services),
        report_base=_report_base(request),
    )
    return _created(run)


@router.get("/evals/{eval_id}/runs")
async def get_eval_runs(
    eval_id: str,
    request: Request,
    principal: Caller,
    services: Svc,
    after: After = None,
    limit: Limit = None,
    order: Order = None,
    status: Annotated[str | None, Query(description="queued, in_progress, completed, canceled or failed")] = None,
) -> Response:
    page = await run_in_threadpool(
        ev.list_runs,
        services.engine,
        principal.project_id,
        eval_id,
        after=after,
        limit=limit,
        order=order,
        status=status,
        report_base=_report_base(request),
    )
    return json_response(page)


@router.get("/evals/{eval_id}/runs/{run_id}")
async def get_eval_run(eval_id: str, run_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    row = await run_in_threadpool(ev.get_run_row, services.engine, principal.project_id, eval_id, run_id)
    return json_response(ev.render_run(row, _report_base(request)))


@router.post("/evals/{eval_id}/runs/{run_id}")
async def cancel_eval_run(eval_id: str, run_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    """Cancel as the spec and SDKs up to 3.3 send it (no body)."""
    run = await run_in_threadpool(
        ev.cancel_run, services.engine, principal.project_id, eval_id, run_id, services.writes, _report_base(request)
    )
    return json_response(run)


@router.post("/evals/{eval_id}/runs/{run_id}/cancel")
async def cancel_eval_run_by_path(
    eval_id: str, run_id: str, request: Request, principal: Caller, services: Svc
) -> Response:
    """Cancel as openai 3.57 sends it (no body)."""
    return await cancel_eval_run(eval_id, run_id, request, principal, services)


@router.delete("/evals/{eval_id}/runs/{run_id}")
async def delete_eval_run(eval_id: str, run_id: str, principal: Caller, services: Svc) -> Response:
    deleted = await run_in_threadpool(ev.delete_run, principal.project_id, eval_id, run_id, services.writes)
    return json_response(deleted)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items")
async def get_eval_run_output_items(
    eval_id: str,
    run_id: str,
    principal: Caller,
    services: Svc,
    after: After = None,
    limit: Limit = None,
    order: Order = None,
    status: Annotated[str | None, Query(description="pass or fail")] = None,
) -> Response:
    page = await run_in_threadpool(
        ev.list_output_items,
        services.engine,
        principal.project_id,
        eval_id,
        run_id,
        after=after,
        limit=limit,
        order=order,
        status=status,
    )
    return json_response(page)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
async def get_eval_run_output_item(
    eval_id: str, run_id: str, output_item_id: str, principal: Caller, services: Svc
) -> Response:
    item = await run_in_threadpool(
        ev.get_output_item, services.engine, principal.project_id, eval_id, run_id, output_item_id
    )
    return json_response(item)


@router.get("/evals/{eval_id}/comparison")
async def get_eval_comparison(
    eval_id: str,
    principal: Caller,
    services: Svc,
    run_ids: Annotated[
        list[str] | None, Query(description="Runs to compare, the first as baseline (default: every finished run)")
    ] = None,
) -> Response:
    """Pass rates per subject (run) and criterion with Wilson 95% intervals; each run against the first."""
    report = await run_in_threadpool(compare_eval_runs, services.engine, principal.project_id, eval_id, run_ids)
    return json_response(report)


@router.post("/fine_tuning/alpha/graders/run", openapi_extra=_body("RunGraderRequest"))
async def run_grader(request: Request, principal: Caller, services: Svc) -> Response:
    body = await _json(request, services)
    ctx = GradingContext(sampler=RegistrySampler(services.registry))
    return json_response(await trials.run_grader(body, ctx))


@router.post("/fine_tuning/alpha/graders/validate", openapi_extra=_body("ValidateGraderRequest"))
async def validate_grader(request: Request, principal: Caller, services: Svc) -> Response:
    return json_response(trials.validate_grader_request(await _json(request, services)))
