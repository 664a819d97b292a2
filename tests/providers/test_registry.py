"""The registry's fine-tuned models: owned by one project, resolved off the event loop, once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import pytest

from stillroom.config import ModelConfig
from stillroom.errors import NotFoundError
from stillroom.providers.registry import FineTunedModel, ProviderRegistry

NAME = "ft:base:proj-a:s:ftjob-1"


class Resolver:
    """Records where and how often the registry asks the database (here: a dict) about a name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str) -> FineTunedModel | None:
        self.calls.append((name, threading.current_thread().name))
        if name != NAME:
            return None
        config = ModelConfig(name=name, provider="local", path=Path("/nonexistent/student.gguf"))
        return FineTunedModel(config, "proj-a")


def _lookups(resolver: Resolver, asks: list[tuple[str, str | None]]) -> list[str]:
    """Run `lookup` for each (name, project) on one event loop; 'ok' or the error code for each."""

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:
            registry = ProviderRegistry([], session, resolver)
            loop_thread = threading.current_thread().name
            outcomes = []
            for name, project in asks:
                try:
                    config, _ = await registry.lookup(name, project)
                    outcomes.append("ok" if config.name == name else "wrong model")
                except NotFoundError as exc:
                    outcomes.append(str(exc.code))
            await registry.aclose()
            assert all(thread != loop_thread for _, thread in resolver.calls)  # never on the loop
            return outcomes

    return asyncio.run(run())


def test_a_fine_tuned_model_is_found_only_by_its_own_project() -> None:
    resolver = Resolver()
    outcomes = _lookups(resolver, [(NAME, "proj-a"), (NAME, "proj-b"), (NAME, "proj-a")])
    assert outcomes == ["ok", "model_not_found", "ok"]
    assert [name for name, _ in resolver.calls] == [NAME]  # resolved once, then cached


def test_an_unknown_ft_name_is_model_not_found_and_asked_off_the_loop() -> None:
    resolver = Resolver()
    assert _lookups(resolver, [("ft:base:proj-a:s:ftjob-missing", "proj-a")]) == ["model_not_found"]
    assert len(resolver.calls) == 1


def test_get_without_a_project_still_serves_worker_side_callers() -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            registry = ProviderRegistry([], session, Resolver())
            assert registry.get(NAME)[0].name == NAME
            with pytest.raises(NotFoundError):
                registry.get(NAME, "proj-b")
            await registry.aclose()

    asyncio.run(run())
