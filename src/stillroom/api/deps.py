"""Typed dependencies: the app's services and the calling principal."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from stillroom.auth import Principal, authenticate
from stillroom.errors import PayloadTooLargeError
from stillroom.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_principal(request: Request) -> Principal:
    """The caller, from `api-key` or `Authorization: Bearer` (projects and roles will resolve here)."""
    presented = request.headers.get("api-key")
    authorization = request.headers.get("authorization")
    if presented is None and authorization is not None:
        scheme, _, token = authorization.partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else authorization
    return authenticate(get_services(request).settings.api_key, presented)


Svc = Annotated[Services, Depends(get_services)]
Caller = Annotated[Principal, Depends(get_principal)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (declared or actual)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
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
