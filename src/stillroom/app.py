"""create_app(settings): the FastAPI application, with nothing taken from globals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from starlette.responses import Response

from stillroom import __version__
from stillroom.api import chat, evals, files, fine_tuning, models, projects, stored
from stillroom.api.deps import Svc, get_principal, json_response
from stillroom.api.errors import EnvelopeCORSMiddleware, install_error_handlers
from stillroom.api.hosts import HostPolicy
from stillroom.api.openapi import install_openapi
from stillroom.config import Settings
from stillroom.services import Services
from stillroom.web.pages import console_router

# The same routes answer OpenAI's paths (/v1), Azure's (/openai, with ?api-version) and Azure v1 (/openai/v1).
PREFIXES = ("/v1", "/openai", "/openai/v1")

health = APIRouter()


@health.get("/health", include_in_schema=False)
async def get_health(services: Svc) -> Response:
    """Liveness: 200 while the process serves, with `status` "ok" or "degraded" (stores failing)."""
    return json_response(services.health())


@health.get("/health/ready", include_in_schema=False)
async def get_readiness(services: Svc) -> Response:
    """Readiness: 503 while stores fail, so a load balancer can send the traffic elsewhere."""
    body = services.health()
    response = json_response(body)
    response.status_code = 200 if body["status"] == "ok" else 503
    return response


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app; `services` already started (as `stillroom serve` does, to report failures in one line), or
    started by the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services or Services.start(settings)
        try:
            yield
        finally:
            await app.state.services.aclose()

    app = FastAPI(title="Stillroom", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    checked = [Depends(get_principal)]  # every route below: signed in, and allowed its operation's action
    for prefix in PREFIXES:
        app.include_router(chat.router, prefix=prefix)
        app.include_router(stored.router, prefix=prefix, dependencies=checked)
        app.include_router(models.router, prefix=prefix, dependencies=checked)
        app.include_router(files.router, prefix=prefix, dependencies=checked)
        app.include_router(fine_tuning.router, prefix=prefix, dependencies=checked)
        app.include_router(evals.router, prefix=prefix, dependencies=checked)
    app.include_router(projects.router, prefix="/v1", dependencies=checked)
    app.include_router(projects.identity, prefix="/v1", dependencies=checked)
    app.include_router(chat.deployments, prefix="/openai")
    app.include_router(stored.deployments, prefix="/openai", dependencies=checked)
    app.include_router(health)
    app.include_router(console_router())  # the web console at /, a client of the routes above
    cors_origins = settings.cors_origin_list()
    if cors_origins:  # off by default: no Access-Control-* headers, and preflights are refused (405)
        app.add_middleware(
            EnvelopeCORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "x-stillroom-stored", "x-stillroom-stored-reason"],
            max_age=600,
        )
    install_error_handlers(app, HostPolicy(settings.allowed_host_list()))
    install_openapi(app, PREFIXES)
    return app
