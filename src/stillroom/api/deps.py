"""Typed dependencies: the app's services and the calling principal."""

from __future__ import annotations

from typing import Annotated, Any, cast

import orjson
from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from stillroom.auth.access import Credentials
from stillroom.auth.roles import Principal, action_for, require
from stillroom.errors import PayloadTooLargeError, PermissionDeniedError, UnsupportedMediaTypeError
from stillroom.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_principal(request: Request) -> Principal:
    """The caller, from `api-key` or `Authorization: Bearer` (a project key, the server key or an OIDC token),
    with the `OpenAI-Project` header; checked against the action the route's operation needs
    (auth/roles.py OPERATION_ACTIONS), audited, and scoped to the `{project_id}` in the path, if any."""
    cached = request.scope.get("stillroom.principal")
    if cached is not None:
        return cast(Principal, cached)
    services = get_services(request)
    presented = request.headers.get("api-key")
    authorization = request.headers.get("authorization")
    if presented is None and authorization is not None:
        scheme, _, token = authorization.partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else authorization
    credentials = Credentials(presented, request.headers.get("openai-project"))
    if services.access.is_slow(credentials):  # a token not seen yet: signature check, perhaps a JWKS fetch
        principal = await run_in_threadpool(services.access.authenticate, credentials)
    else:
        principal = services.access.authenticate(credentials)
    endpoint = request.scope.get("endpoint")
    operation = getattr(endpoint, "__name__", "")
    action = action_for(operation)
    if action is None:  # a route missing from the table is refused, never open
        raise PermissionDeniedError(f"The operation '{operation}' declares no action; nobody may call it.")
    if "project_id" in request.path_params:
        principal = services.access.scope(principal, request.path_params["project_id"])
    allowed = principal.can(action)
    if services.audit.is_audited(action):
        target = f"{request.method} {request.url.path}"
        services.audit.record(principal, action, operation, target, allowed=allowed)
    require(principal, action)
    request.scope["stillroom.principal"] = principal
    return principal


Svc = Annotated[Services, Depends(get_services)]
Caller = Annotated[Principal, Depends(get_principal)]

# The query parameters of the clamped cursor lists (stillroom.wire.pages.parse_page): stored completions, evals.
After = Annotated[str | None, Query(description="Return items after this id, in the requested order")]
Limit = Annotated[str | None, Query(description="Items per page, 1..100 (default 20)")]
Order = Annotated[str | None, Query(description="asc (default) or desc")]


async def read_body(request: Request, limit: int) -> bytes:
    """A JSON body: refused with 415 unless sent as `application/json` (a web page can send `text/plain`
    cross-origin without asking, never JSON), and with 413 once it passes `limit` bytes (declared or actual)."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        sent = f"Content-Type {content_type!r} is not supported" if content_type else "The Content-Type is missing"
        raise UnsupportedMediaTypeError(f"{sent}: send the request body as 'application/json'.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body too large: {declared} bytes; the limit is {limit} bytes.")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"Request body too large; the limit is {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json", headers=headers)
