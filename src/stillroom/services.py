"""The long-lived parts of a running server, built from Settings and closed in order."""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from stillroom.config import Settings
from stillroom.gateway import Gateway
from stillroom.providers.openai import make_session
from stillroom.providers.registry import ProviderRegistry
from stillroom.store.db import Engine, make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.writer import CommitQueue


@dataclass
class Services:
    settings: Settings
    engine: Engine
    commits: CommitQueue
    registry: ProviderRegistry
    gateway: Gateway
    http: aiohttp.ClientSession
    started_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def start(cls, settings: Settings) -> Services:
        models = settings.load_models()
        engine = make_engine(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous, lock_timeout=settings.store_timeout
        )
        upgrade_database(engine)
        http = make_session(
            max_connections=settings.upstream_max_connections, connect_timeout=settings.upstream_connect_timeout
        )
        registry = ProviderRegistry(models, http)
        registry.load_local_models()
        commits = CommitQueue(engine, batch_size=settings.commit_batch_size, stall_after=settings.store_timeout)
        gateway = Gateway(registry, commits, store_timeout=settings.store_timeout)
        return cls(settings, engine, commits, registry, gateway, http)

    async def aclose(self) -> None:
        self.commits.close()
        await self.registry.aclose()
        await self.http.close()
        self.engine.dispose()

    def model_cards(self) -> list[dict[str, Any]]:
        return [
            {"id": name, "object": "model", "created": self.started_at, "owned_by": model.provider}
            for name, model in self.registry.models.items()
        ]

    def health(self) -> dict[str, Any]:
        """`status` is "degraded" while stores fail (the last write failed, or one has been stuck for longer
        than the store timeout), "ok" again once a write succeeds."""
        return {"status": "degraded" if self.commits.is_degraded() else "ok", "store": self.commits.health()}

def tune_for_serving() -> None:
    """Process-wide settings for a long-running server, applied once everything is loaded (`stillroom serve`).

    - The objects alive at start-up (modules, routes, models, the OpenAPI schema: about 130,000) go to the
      permanent generation (`gc.freeze`): a full collection no longer scans them, which took 90-130 ms on
      this machine and stalled every request and stream meanwhile.
    - Young collections run every 20,000 allocations instead of 700: fewer, and fewer objects promoted.
    - A thread waiting for the GIL gets it after 1 ms instead of 5 ms, so the writer thread's commit does not
      wait whole 5 ms slices behind a busy event loop (and the loop not behind it).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    sys.setswitchinterval(0.001)
