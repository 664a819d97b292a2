"""The admin API: projects (quota, storage switch, store policy, retention), their API keys, audit log, and
bulk deletes of stored completions. Paths follow OpenAI's `/v1/organization/projects`. `GET /v1/me` says
who the caller is (project, role, actions), so a client can show only what it may do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from stillroom import projects
from stillroom.api.deps import Caller, Svc, json_response, read_body
from stillroom.audit import list_audit_events
from stillroom.auth.keys import issue_key, list_keys, render_key, revoke_key
from stillroom.auth.roles import describe_principal, parse_role
from stillroom.errors import BadRequestError
from stillroom.services import Services
from stillroom.wire.chat import parse_json_object
from stillroom.wire.pages import parse_page

router = APIRouter(prefix="/organization/projects")
identity = APIRouter()
T = TypeVar("T")


async def _changing(services: Services, change: Callable[[], T]) -> T:
    """Run a change off the loop, then reload this server's cached keys and projects."""

    def run() -> T:
        result = change()
        services.access.refresh()
        return result

    return await run_in_threadpool(run)


async def _body(request: Request, services: Services) -> dict[str, Any]:
    return parse_json_object(await read_body(request, services.settings.max_body_bytes))


def _rendered(services: Services, row: Any) -> dict[str, Any]:
    return projects.render_project(row, server_storage=services.settings.storage_enabled)


@identity.get("/me")
async def get_me(principal: Caller) -> Response:
    """The calling principal: `{project_id, role, actions, subject, all_projects}`."""
    return json_response(describe_principal(principal))


@router.get("")
async def list_projects(_principal: Caller, services: Svc) -> Response:
    rows = await run_in_threadpool(projects.list_projects, services.engine)
    data = [_rendered(services, row) for row in rows]
    return json_response({"object": "list", "data": data, "first_id": None, "last_id": None, "has_more": False})


@router.post("")
async def create_project(request: Request, _principal: Caller, services: Svc) -> Response:
    body = await _body(request, services)
    quota = body.get("quota_bytes", services.settings.default_quota_bytes)
    row = await _changing(
        services,
        lambda: projects.create_project(
            services.writes, body.get("name"), project_id=body.get("id"), quota_bytes=quota
        ),
    )
    return json_response(_rendered(services, row))


@router.get("/{project_id}")
async def retrieve_project(project_id: str, principal: Caller, services: Svc) -> Response:
    row = await run_in_threadpool(projects.get_project, services.engine, principal.project_id)
    return json_response(_rendered(services, row))


@router.post("/{project_id}")
async def modify_project(project_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    """Rename, or change quota_bytes, storage_enabled, store_policy, retention_days."""
    body = await _body(request, services)
    row = await _changing(services, lambda: projects.modify_project(services.writes, principal.project_id, body))
    return json_response(_rendered(services, row))


@router.delete("/{project_id}")
async def delete_project(project_id: str, principal: Caller, services: Svc) -> Response:
    """Delete the project and everything it holds."""
    result = await _changing(
        services, lambda: projects.delete_project(services.writes, services.storage, principal.project_id)
    )
    return json_response(result)


@router.get("/{project_id}/api_keys")
async def list_project_api_keys(project_id: str, principal: Caller, services: Svc) -> Response:
    data = await run_in_threadpool(list_keys, services.engine, principal.project_id)
    return json_response({"object": "list", "data": data, "has_more": False})


@router.post("/{project_id}/api_keys")
async def create_project_api_key(project_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    """`{"role": ..., "name": ..., "store_policy": {...}}`; the answer's `value` is the key, shown only now."""
    body = await _body(request, services)
    role = parse_role(body.get("role", "inference"))
    policy = projects.parse_policy(body["store_policy"], "store_policy") if body.get("store_policy") else None
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 256:
        raise BadRequestError("Invalid 'name': expected at most 256 characters.", param="name")
    issued = await _changing(
        services, lambda: issue_key(services.writes, principal.project_id, role, name=name, policy=policy)
    )
    return json_response(render_key(issued.row) | {"value": issued.key})


@router.delete("/{project_id}/api_keys/{key_id}")
async def delete_project_api_key(project_id: str, key_id: str, principal: Caller, services: Svc) -> Response:
    result = await _changing(services, lambda: revoke_key(services.writes, principal.project_id, key_id))
    return json_response(result)


@router.get("/{project_id}/audit_logs")
async def list_audit_logs(
    project_id: str,
    principal: Caller,
    services: Svc,
    after: Annotated[str | None, Query(description="The last id of the previous page")] = None,
    limit: Annotated[str | None, Query(description="Items per page, 1..100 (default 20)")] = None,
) -> Response:
    """The project's audit events, newest first."""
    size, _ = parse_page(limit, None)
    await run_in_threadpool(services.audit.flush)
    page = await run_in_threadpool(
        lambda: list_audit_events(services.engine, principal.project_id, after=after, limit=size)
    )
    return json_response(page)


@router.post("/{project_id}/chat_completions/delete")
async def delete_chat_completions(project_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    """Delete the stored completions matching metadata/model/created filters; `dry_run: true` only counts."""
    body = await _body(request, services)
    result = await run_in_threadpool(
        projects.delete_chat_completions, services.engine, services.writes, principal.project_id, body
    )
    return json_response(result)
