"""Stored chat completions: list, retrieve, update, delete, and their input messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.responses import Response

from stillroom.api.deps import After, Caller, Limit, Order, Svc, json_response, read_body
from stillroom.errors import BadRequestError
from stillroom.stored import (
    delete_stored_completion,
    get_stored_completion,
    list_stored_completions,
    list_stored_messages,
    update_stored_completion,
)
from stillroom.wire.chat import parse_json_object
from stillroom.wire.pages import parse_page

router = APIRouter()
deployments = APIRouter()


Search = Annotated[
    str | None, Query(description="Stillroom: words in the messages or the answer, all of them (word* for a prefix)")
]
CreatedAfter = Annotated[str | None, Query(description="Stillroom: created at or after this unix time (seconds)")]
CreatedBefore = Annotated[str | None, Query(description="Stillroom: created before this unix time (seconds)")]


@router.get("/chat/completions")
async def list_chat_completions(
    request: Request,
    principal: Caller,
    services: Svc,
    after: After = None,
    limit: Limit = None,
    order: Order = None,
    model: Annotated[str | None, Query(description="Only completions asked of this model")] = None,
    search: Search = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> Response:
    """Stored completions; filter metadata with `metadata[key]=value` pairs (all must match)."""
    size, descending = parse_page(limit, order)
    page = await run_in_threadpool(
        list_stored_completions,
        services.engine,
        services.writes,
        principal.project_id,
        metadata=_metadata_filter(request.query_params),
        model=model,
        after=after,
        limit=size,
        descending=descending,
        search=search,
        created_after=created_after,
        created_before=created_before,
    )
    return json_response(page)


@deployments.get("/deployments/{deployment}/chat/completions")
async def list_deployment_chat_completions(
    deployment: str,
    request: Request,
    principal: Caller,
    services: Svc,
    after: After = None,
    limit: Limit = None,
    order: Order = None,
    model: Annotated[str | None, Query()] = None,
    search: Search = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> Response:
    """Azure's list path when the client pins a deployment; lists like the plain path (filter with `model`)."""
    return await list_chat_completions(
        request, principal, services, after, limit, order, model, search, created_after, created_before
    )


@router.get("/chat/completions/{completion_id}")
async def get_chat_completion(completion_id: str, principal: Caller, services: Svc) -> Response:
    found = await run_in_threadpool(get_stored_completion, services.engine, principal.project_id, completion_id)
    return json_response(found)


@router.get("/chat/completions/{completion_id}/messages")
async def get_chat_messages(
    completion_id: str, principal: Caller, services: Svc, after: After = None, limit: Limit = None, order: Order = None
) -> Response:
    size, descending = parse_page(limit, order)
    page = await run_in_threadpool(
        list_stored_messages,
        services.engine,
        principal.project_id,
        completion_id,
        after=after,
        limit=size,
        descending=descending,
    )
    return json_response(page)


_UPDATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
                    },
                }
            }
        },
    }
}


@router.post("/chat/completions/{completion_id}", openapi_extra=_UPDATE_BODY)
async def update_chat_completion(completion_id: str, request: Request, principal: Caller, services: Svc) -> Response:
    body = parse_json_object(await read_body(request, services.settings.max_body_bytes))
    updated = await update_stored_completion(services.commits, principal.project_id, completion_id, body)
    return json_response(updated)


@router.delete("/chat/completions/{completion_id}")
async def delete_chat_completion(completion_id: str, principal: Caller, services: Svc) -> Response:
    deleted = await delete_stored_completion(services.commits, principal.project_id, completion_id)
    return json_response(deleted)


def _metadata_filter(query: QueryParams) -> dict[str, str]:
    """`metadata[key]=value` pairs, as the SDK encodes them (every pair must match)."""
    pairs: dict[str, str] = {}
    for name, value in query.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[9:-1]] = value
        elif name == "metadata":
            raise BadRequestError("Filter metadata as metadata[key]=value pairs.", param="metadata")
    return pairs
