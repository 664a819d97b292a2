"""The eval-run side of `stillroom worker`: a thread with its own event loop, provider registry and HTTP
session, claiming queued runs until told to stop. Runs sample and judge through the same models the
server routes to (the configured list, and `ft:` students registered in the database)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from stillroom.config import Settings
from stillroom.evals.graders import GradingContext
from stillroom.evals.runs import RunWorker
from stillroom.evals.sampling import RegistrySampler
from stillroom.files import open_file_content
from stillroom.providers.openai import make_session
from stillroom.providers.registry import ProviderRegistry
from stillroom.store.blobs import LocalFileStorage
from stillroom.store.db import Engine
from stillroom.training.models import fine_tuned_model_resolver

log = logging.getLogger("stillroom.evals")
CONCURRENCY = 4  # items in flight per run (the embedded model still answers one at a time)


def start_eval_worker(settings: Settings, engine: Engine, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=run_eval_worker, args=(settings, engine, stop), name="stillroom-evals", daemon=True
    )
    thread.start()
    return thread


def run_eval_worker(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    try:
        asyncio.run(_serve(settings, engine, stop))
    except Exception:  # the edge of the worker thread
        log.exception("the eval worker stopped")


async def _serve(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    async with open_run_worker(settings, engine) as worker:
        await worker.run_forever(stop.is_set)


@asynccontextmanager
async def open_run_worker(settings: Settings, engine: Engine) -> AsyncIterator[RunWorker]:
    """A RunWorker with its own HTTP session and provider registry (closed afterwards)."""
    storage = LocalFileStorage(settings.files_dir)
    models = settings.load_models()
    http = make_session(
        max_connections=settings.upstream_max_connections, connect_timeout=settings.upstream_connect_timeout
    )
    registry = ProviderRegistry(models, http, fine_tuned_model_resolver(engine, storage, {m.name: m for m in models}))

    def read_file(project_id: str, file_id: str) -> bytes:
        _, stream = open_file_content(engine, storage, project_id, file_id)
        with stream:
            return stream.read()

    try:
        yield RunWorker(
            engine,
            RegistrySampler(registry),
            read_file,
            concurrency=CONCURRENCY,
            lease_seconds=settings.job_lease_seconds,
            grading=GradingContext(),
        )
    finally:
        await registry.aclose()
        await http.close()
