"""Asking a configured model for a chat completion, for judges and for runs that sample a model.

Goes through the gateway's provider registry, so any model Stillroom routes to (upstreams, the embedded
model, `ft:` students once registered) can be sampled or used as a judge. Samples taken for an eval are
not stored as chat completions.
"""

from __future__ import annotations

from typing import Any

import orjson

from stillroom.errors import BadGatewayError
from stillroom.providers.registry import ProviderRegistry


class RegistrySampler:
    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry

    async def complete(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        config, provider = self._registry.get(model)
        raw = await provider.complete({**body, "model": config.target_model})
        try:
            completion = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadGatewayError(f"The upstream for model {model!r} answered with invalid JSON.") from exc
        if not isinstance(completion, dict):
            raise BadGatewayError(f"The upstream for model {model!r} answered with something other than an object.")
        completion["model"] = model
        return completion
