"""Model name -> provider, built from the configured model list; names it does not know are passed to
`resolve` (fine-tuned `ft:` models, registered in the database by whichever worker trained them: run here
by llama.cpp, or, for a job trained upstream, forwarded to its base model's provider under the upstream's
name), and what that finds is kept for the life of the process.

A fine-tuned model belongs to the project that trained it: asked for by any other project it does not
exist (404 `model_not_found`, the same answer as an unknown name). `lookup` is the event loop's way in: a
name not yet cached is resolved on a worker thread, so the database read never blocks the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from stillroom.config import ModelConfig
from stillroom.errors import NotFoundError
from stillroom.providers.base import Provider
from stillroom.providers.local import LocalProvider
from stillroom.providers.openai import azure_provider, openai_provider


@dataclass(frozen=True, slots=True)
class FineTunedModel:
    """What `resolve` finds for an `ft:` name: the model entry to serve it by, and the project that owns it."""

    config: ModelConfig
    project_id: str


class ProviderRegistry:
    def __init__(
        self,
        models: Iterable[ModelConfig],
        session: aiohttp.ClientSession,
        resolve: Callable[[str], FineTunedModel | None] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self._session = session
        self._providers: dict[str, Provider] = {}
        self._resolve = resolve
        self._resolved: dict[str, tuple[FineTunedModel, Provider]] = {}
        self._resolving = asyncio.Lock()  # one miss at a time: a model is resolved (and its provider made) once
        for model in self.models.values():
            model.api_key()  # a missing key variable fails at start-up, not on a request
            self._providers[model.name] = self._provider(model)

    def _provider(self, model: ModelConfig) -> Provider:
        """llama.cpp for a local model (a fine-tuned one's student GGUF too), else the model's upstream."""
        if model.provider == "local":
            return LocalProvider(model)
        if model.provider == "azure":
            return azure_provider(model, self._session)
        return openai_provider(model, self._session)

    def get(self, name: str, project_id: str | None = None) -> tuple[ModelConfig, Provider]:
        """The model and its provider; an `ft:` name is looked up in the database here, blocking (call from a
        worker thread, or use `lookup`). With `project_id`, another project's fine-tuned model is not found."""
        provider = self._providers.get(name)
        if provider is not None:
            return self.models[name], provider
        found = self._resolved.get(name)
        if found is None and self._is_fine_tuned(name):
            assert self._resolve is not None
            if (model := self._resolve(name)) is not None:
                found = self._resolved.setdefault(name, (model, self._provider(model.config)))
        return self._owned(name, found, project_id)

    async def lookup(self, name: str, project_id: str | None) -> tuple[ModelConfig, Provider]:
        """`get` for the event loop: an `ft:` name not yet cached is resolved on a worker thread."""
        provider = self._providers.get(name)
        if provider is not None:
            return self.models[name], provider
        found = self._resolved.get(name)
        if found is None and self._is_fine_tuned(name):
            assert self._resolve is not None
            async with self._resolving:
                found = self._resolved.get(name)
                if found is None and (model := await asyncio.to_thread(self._resolve, name)) is not None:
                    found = self._resolved.setdefault(name, (model, self._provider(model.config)))
        return self._owned(name, found, project_id)

    def _is_fine_tuned(self, name: str) -> bool:
        return name.startswith("ft:") and self._resolve is not None

    @staticmethod
    def _owned(
        name: str, found: tuple[FineTunedModel, Provider] | None, project_id: str | None
    ) -> tuple[ModelConfig, Provider]:
        if found is None or (project_id is not None and found[0].project_id != project_id):
            raise NotFoundError(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return found[0].config, found[1]

    def load_local_models(self) -> None:
        for provider in self._providers.values():
            if isinstance(provider, LocalProvider):
                provider.load()

    async def aclose(self) -> None:
        for provider in [*self._providers.values(), *(p for _, p in self._resolved.values())]:
            await provider.aclose()
