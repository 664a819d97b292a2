"""The `stillroom` command: serve, migrate, report storage."""

from __future__ import annotations

import errno
import logging
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from stillroom import __version__, cli_evals, cli_jobs
from stillroom.cli_admin import audit_app, completions_app, keys_app, projects_app
from stillroom.cli_edge import ConfigFile, DatabaseUrl, Debug, database, fail, open_database, parse_pairs, reason
from stillroom.config import ModelConfig, Settings, load_settings, redact_url, unknown_environment_settings
from stillroom.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("stillroom")

app = typer.Typer(
    help="Stillroom: an OpenAI-compatible gateway that keeps your chat completions.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(cli_evals.eval_app, name="eval")
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
app.add_typer(completions_app, name="completions")
app.add_typer(audit_app, name="audit")
app.add_typer(cli_jobs.jobs_app, name="jobs")
app.command()(cli_jobs.worker)
app.command()(cli_jobs.distill)


class RedactSecrets(logging.Filter):
    """Drops anything that looks like an Authorization or api-key value from log records."""

    _pattern = re.compile(r"(?i)(bearer\s+|api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._pattern.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if logging.getLogger().level > logging.DEBUG:  # alembic's INFO lines (plugins, "Running upgrade") say nothing
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _listen(host: str, port: int) -> socket.socket:
    """The listening address, bound now: a port in use fails before the model loads and migrations run."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use; choose another with --port") from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {reason(exc)}") from exc
    return sock


def _describe(models: list[ModelConfig]) -> str:
    def where(model: ModelConfig) -> str:
        upstream = model.base_url or model.endpoint
        return f"{model.name} ({model.provider}{' at ' + upstream if upstream else ''})"

    return ", ".join(where(model) for model in models)


def _prepare(host: str, port: int, **overrides: Any) -> tuple[Settings, list[ModelConfig], socket.socket]:
    """The cheap checks, before anything slow, each failing in one line: settings, the model list, upstream keys,
    model files, the port (bound here), the database (migrated here)."""
    settings = load_settings(**overrides)
    models = settings.load_models()
    for model in models:
        model.api_key()
        if model.provider == "local":
            model.model_path()
    listener = _listen(host, port)
    try:
        with open_database(settings.database_url):
            pass
    except Exception:
        listener.close()
        raise
    return settings, models, listener


def _app_factory(settings: Settings, models: list[ModelConfig], url: str) -> Callable[[], FastAPI]:
    def start() -> FastAPI:
        """Called by uvicorn inside its event loop, before it listens: loads the models, opens the database."""
        from stillroom.app import create_app
        from stillroom.services import Services, tune_for_serving

        try:
            services = Services.start(settings)
        except TypeError as exc:  # uvicorn would take it for a bad factory signature
            raise RuntimeError(str(exc)) from exc
        log.info("serving %s on %s; database %s", _describe(models), url, redact_url(settings.database_url))
        application = create_app(settings, services)
        tune_for_serving()
        return application

    return start


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    allowed_hosts: Annotated[
        str | None, typer.Option("--allowed-hosts", help="Extra Host names to answer (env STILLROOM_ALLOWED_HOSTS)")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs throughput)")] = False,
    worker: Annotated[bool, typer.Option(help="Also run a fine-tuning worker, in a process of its own")] = True,
    debug: Debug = False,
) -> None:
    """Serve the OpenAI-compatible API (applies pending migrations first)."""
    import uvicorn

    try:
        settings, models, listener = _prepare(
            host, port, database_url=database_url, config=config, allowed_hosts=allowed_hosts
        )
    except Exception as exc:  # the CLI edge
        fail(exc, debug)
        return
    _configure_logging(settings.log_level)
    for name in unknown_environment_settings():
        log.warning("ignoring %s: there is no such setting", name)
    port = listener.getsockname()[1]  # the one the system chose, for --port 0
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    server = uvicorn.Server(
        uvicorn.Config(
            _app_factory(settings, models, url),
            factory=True,
            host=host,
            port=port,
            access_log=access_log,
            log_config=None,
            timeout_graceful_shutdown=10,
        )
    )
    worker_process = cli_jobs.start_worker_process(settings) if worker else None
    try:
        server.run(sockets=[listener])
    except Exception as exc:  # the CLI edge
        fail(exc, debug)
    finally:
        listener.close()
        if worker_process is not None:
            cli_jobs.stop_worker_process(worker_process)


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """Apply pending migrations."""
    with database(database_url, debug):
        pass
    typer.echo("database is up to date")


@app.command()
def usage(database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """Bytes kept per project (completion rows plus shared message contents), against its quota: read from
    the running totals, so it answers at once however much is stored."""
    from stillroom.store.projects import usage_totals

    with database(database_url, debug) as engine:
        totals = usage_totals(engine)
    table = Table("project", "bytes kept", "quota bytes")
    for project, (size, quota) in sorted(totals.items()):
        table.add_row(project, f"{size:,}", f"{quota:,}")
    Console().print(table)


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write", dir_okay=False)],
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="key=value filter, repeatable")] = None,
    model: Annotated[str | None, typer.Option(help="Only completions asked of this model")] = None,
    project: Annotated[str, typer.Option(help="Project whose completions to export")] = "default",
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Export stored completions as chat fine-tuning JSONL ({"messages": [...]} per line)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from stillroom.export import iter_training_rows

    with database(database_url, debug) as engine:
        pairs = parse_pairs(metadata)
        with output.open("wb") as out, Progress(SpinnerColumn(), TextColumn("{task.completed:,} rows")) as bar:
            task = bar.add_task("export")
            for row in iter_training_rows(engine, project, metadata=pairs, model=model):
                out.write(orjson.dumps(row) + b"\n")
                bar.advance(task)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
