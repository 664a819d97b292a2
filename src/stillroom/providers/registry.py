"""Model name -> provider, built from the configured model list."""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp

from stillroom.config import ModelConfig
from stillroom.errors import NotFoundError
from stillroom.providers.base import Provider
from stillroom.providers.local import LocalProvider
from stillroom.providers.openai import azure_provider, openai_provider


class ProviderRegistry:
    def __init__(self, models: Iterable[ModelConfig], session: aiohttp.ClientSession) -> None:
        self.models = {m.name: m for m in models}
        self._providers: dict[str, Provider] = {}
        for model in self.models.values():
            model.api_key()  # a missing key variable fails at start-up, not on a request
            if model.provider == "local":
                self._providers[model.name] = LocalProvider(model)
            elif model.provider == "azure":
                self._providers[model.name] = azure_provider(model, session)
            else:
                self._providers[model.name] = openai_provider(model, session)

    def get(self, name: str) -> tuple[ModelConfig, Provider]:
        provider = self._providers.get(name)
        if provider is None:
            raise NotFoundError(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return self.models[name], provider

    def load_local_models(self) -> None:
        for provider in self._providers.values():
            if isinstance(provider, LocalProvider):
                provider.load()

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
