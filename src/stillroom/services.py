"""The long-lived parts of a running server, built from Settings and closed in order."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from stillroom.audit import AuditLog
from stillroom.auth.access import Access
from stillroom.auth.tokens import TokenRules, TokenVerifier
from stillroom.config import Settings
from stillroom.gateway import Gateway
from stillroom.providers.openai import make_session
from stillroom.providers.registry import ProviderRegistry
from stillroom.retention import RetentionSweeper
from stillroom.store.blobs import FileStorage, LocalFileStorage
from stillroom.store.db import Engine, make_engine
from stillroom.store.migrate import upgrade_database
from stillroom.store.projects import Writes
from stillroom.store.writer import CommitQueue
from stillroom.training.models import fine_tuned_model_cards, fine_tuned_model_resolver

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    engine: Engine
    commits: CommitQueue
    registry: ProviderRegistry
    gateway: Gateway
    http: aiohttp.ClientSession
    access: Access
    audit: AuditLog
    retention: RetentionSweeper
    writes: Writes  # one write transaction, run by the writer thread (call from a worker thread)
    storage: FileStorage  # the bytes of files (uploads, datasets, training results)
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
        storage = LocalFileStorage(settings.files_dir)
        resolve = fine_tuned_model_resolver(engine, storage, {m.name: m for m in models})
        registry = ProviderRegistry(models, http, resolve)
        registry.load_local_models()
        commits = CommitQueue(engine, batch_size=settings.commit_batch_size, stall_after=settings.store_timeout)
        writes = _through(commits)
        access, audit, retention = _start_access(settings, engine, writes)
        gateway = Gateway(registry, commits, store_timeout=settings.store_timeout, access=access)
        return cls(settings, engine, commits, registry, gateway, http, access, audit, retention, writes, storage)

    async def aclose(self) -> None:
        self.retention.close()
        self.access.close()
        self.audit.flush_quietly()
        self.commits.close()
        await self.registry.aclose()
        await self.http.close()
        self.engine.dispose()

    def model_cards(self) -> list[dict[str, Any]]:
        """The configured models, then the fine-tuned ones in the database (call from a worker thread)."""
        configured = [
            {"id": name, "object": "model", "created": self.started_at, "owned_by": model.provider}
            for name, model in self.registry.models.items()
        ]
        return configured + fine_tuned_model_cards(self.engine)

    def health(self) -> dict[str, Any]:
        """`status` is "degraded" while stores fail (the last write failed, or one has been stuck for longer
        than the store timeout), "ok" again once a write succeeds."""
        return {"status": "degraded" if self.commits.is_degraded() else "ok", "store": self.commits.health()}


def _start_access(settings: Settings, engine: Engine, writes: Writes) -> tuple[Access, AuditLog, RetentionSweeper]:
    """Keys, tokens and projects (cached, polled), the audit log (flushed by the same poller), retention.
    Their writes go through the one writer, like every other."""
    tokens = None
    if settings.oidc_issuers:
        assert settings.oidc_audience is not None  # Settings checks it
        tokens = TokenVerifier(
            TokenRules(
                issuers=settings.oidc_issuers,
                audience=settings.oidc_audience,
                jwks_url=settings.oidc_jwks_url,
                jwks_file=settings.oidc_jwks_file,
                project_claim=settings.oidc_project_claim,
                project_map=settings.oidc_project_map,
                default_project=settings.oidc_default_project,
                role_claims=settings.oidc_role_claims,
                role_map=settings.oidc_role_map,
            )
        )
    audit = AuditLog(writes, audit_reads=settings.audit_reads)
    access = Access(
        engine,
        settings.api_key,
        tokens,
        poll_interval=settings.access_poll_interval,
        writes=writes,
        on_poll=audit.flush_quietly,
        storage_enabled=settings.storage_enabled,
    )
    access.start()
    retention = RetentionSweeper(
        engine, writes, interval=settings.retention_interval, batch_size=settings.retention_batch_size
    )
    retention.start()
    return access, audit, retention


def _through(commits: CommitQueue) -> Writes:
    """Writes run by the one writer thread, waited for from the calling (worker) thread."""

    def run(fn: Callable[[Any], T], /) -> T:
        return commits.submit_write(fn).result()

    return run


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
