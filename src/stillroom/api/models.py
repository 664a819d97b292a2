"""GET /models: the model names this server routes (fine-tuned ones only to the project that owns them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from stillroom.api.deps import Caller, Svc, json_response
from stillroom.auth import Principal
from stillroom.errors import NotFoundError
from stillroom.services import Services

router = APIRouter()


async def _visible_cards(principal: Principal, services: Services) -> list[dict[str, Any]]:
    """The configured models, and the fine-tuned models of the caller's project."""
    configured = services.registry.models
    cards = await run_in_threadpool(services.model_cards)
    return [c for c in cards if c["id"] in configured or c["owned_by"] == principal.project_id]


@router.get("/models")
async def list_models(principal: Caller, services: Svc) -> Response:
    return json_response({"object": "list", "data": await _visible_cards(principal, services)})


@router.get("/models/{model}")
async def retrieve_model(model: str, principal: Caller, services: Svc) -> Response:
    for card in await _visible_cards(principal, services):
        if card["id"] == model:
            return json_response(card)
    raise NotFoundError(f"The model `{model}` does not exist.", param="model", code="model_not_found")
