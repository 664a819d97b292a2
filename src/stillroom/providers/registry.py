"""Model name -> provider, built from the configured model list; names it does not know are passed to
`resolve` (fine-tuned `ft:` models, registered in the database by whichever worker trained them), and what
that finds is kept for the life of the process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import aiohttp

from stillroom.config import ModelConfig
from stillroom.errors import NotFoundError
from stillroom.providers.base import Provider
from stillroom.providers.local import LocalProvider
from stillroom.providers.openai import azure_provider, openai_provider


class ProviderRegistry:
    def __init__(
        self,
        models: Iterable[ModelConfig],
        session: aiohttp.ClientSession,
        resolve: Callable[[str], ModelConfig | None] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self._providers: dict[str, Provider] = {}
        self._resolve = resolve
        self._resolved: dict[str, tuple[ModelConfig, Provider]] = {}
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
        if provider is None and name.startswith("ft:") and self._resolve is not None:
            found = self._resolved.get(name)
            if found is None and (model := self._resolve(name)) is not None:
                found = self._resolved.setdefault(name, (model, LocalProvider(model)))
            if found is not None:
                return found
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
        for provider in [*self._providers.values(), *(p for _, p in self._resolved.values())]:
            await provider.aclose()
