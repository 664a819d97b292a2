"""POST chat completions: OpenAI (/v1), Azure v1 (/openai/v1) and Azure deployments."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from stillroom.api.deps import Caller, Svc, read_body
from stillroom.auth import Principal
from stillroom.services import Services
from stillroom.wire.chat import parse_chat_request

router = APIRouter()
deployments = APIRouter()


@router.post("/chat/completions")
async def create_chat_completion(request: Request, principal: Caller, services: Svc) -> Response:
    return await _create(request, principal, services, deployment=None)


@deployments.post("/deployments/{deployment}/chat/completions")
async def create_deployment_chat_completion(
    deployment: str, request: Request, principal: Caller, services: Svc
) -> Response:
    return await _create(request, principal, services, deployment=deployment)


async def _create(request: Request, principal: Principal, services: Services, deployment: str | None) -> Response:
    chat = parse_chat_request(await read_body(request, services.settings.max_body_bytes), model=deployment)
    request_id = request.scope["state"]["request_id"]
    if chat.stream:
        answer = await services.gateway.stream_chat(chat, principal, request_id)
        return StreamingResponse(answer.events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    result = await services.gateway.complete_chat(chat, principal, request_id)
    headers = None if result.stored is None else {"x-stillroom-stored": "true" if result.stored else "false"}
    return Response(result.body, media_type="application/json", headers=headers)
