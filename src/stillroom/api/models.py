"""GET /models: the model names this server routes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from stillroom.api.deps import Caller, Svc, json_response
from stillroom.errors import NotFoundError

router = APIRouter()


@router.get("/models")
async def list_models(_principal: Caller, services: Svc) -> Response:
    return json_response({"object": "list", "data": await run_in_threadpool(services.model_cards)})


@router.get("/models/{model}")
async def retrieve_model(model: str, _principal: Caller, services: Svc) -> Response:
    for card in await run_in_threadpool(services.model_cards):
        if card["id"] == model:
            return json_response(card)
    raise NotFoundError(f"The model `{model}` does not exist.", param="model", code="model_not_found")
