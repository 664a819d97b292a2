"""POST chat completions: OpenAI (/v1), Azure v1 (/openai/v1) and Azure deployments.

These two handlers are the hot path, so they are plain Starlette endpoints: FastAPI's dependency
resolution would cost more than the rest of the request handling here.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from stillroom.api.deps import get_principal, read_body
from stillroom.services import Services
from stillroom.wire.chat import parse_chat_request

router = APIRouter()
deployments = APIRouter()


async def create_chat_completion(request: Request) -> Response:
    return await _create(request, deployment=None)


async def create_deployment_chat_completion(request: Request) -> Response:
    return await _create(request, deployment=request.path_params["deployment"])


router.add_route("/chat/completions", create_chat_completion, methods=["POST"])
deployments.add_route("/deployments/{deployment}/chat/completions", create_deployment_chat_completion, methods=["POST"])


async def _create(request: Request, deployment: str | None) -> Response:
    services: Services = request.app.state.services
    principal = await get_principal(request)
    chat = parse_chat_request(await read_body(request, services.settings.max_body_bytes), model=deployment)
    request_id = request.scope["state"]["request_id"]
    if chat.stream:
        answer = await services.gateway.stream_chat(chat, principal, request_id)
        stream_headers = {"cache-control": "no-cache"}
        if answer.refused is not None:
            stream_headers |= {"x-stillroom-stored": "false", "x-stillroom-stored-reason": answer.refused}
        return StreamingResponse(answer.events, media_type="text/event-stream", headers=stream_headers)
    result = await services.gateway.complete_chat(chat, principal, request_id)
    headers = None if result.stored is None else {"x-stillroom-stored": "true" if result.stored else "false"}
    if headers is not None and result.reason is not None:
        headers["x-stillroom-stored-reason"] = result.reason
    return Response(result.body, media_type="application/json", headers=headers)
