"""The `stillroom` command: serve, migrate, report storage."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from stillroom import __version__, cli_evals
from stillroom.cli_admin import audit_app, completions_app, keys_app, projects_app
from stillroom.config import Settings
from stillroom.errors import StillroomError

if TYPE_CHECKING:
    from stillroom.store.db import Engine

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

DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL (env STILLROOM_DATABASE_URL)")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML model list (env STILLROOM_CONFIG)", dir_okay=False)
]

Debug = Annotated[bool, typer.Option(help="Show tracebacks")]


class RedactSecrets(logging.Filter):
    """Drops anything that looks like an Authorization or api-key value from log records."""

    _pattern = re.compile(r"(?i)(bearer\s+|api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._pattern.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@contextmanager
def _database(database_url: str | None) -> Iterator[Engine]:
    """The configured database, migrated to the current schema, closed afterwards."""
    from stillroom.store.db import make_engine
    from stillroom.store.migrate import upgrade_database

    engine = make_engine(_settings(database_url=database_url).database_url)
    try:
        upgrade_database(engine)
        yield engine
    finally:
        engine.dispose()


def _fail(exc: Exception, debug: bool) -> None:
    if debug:
        raise exc
    message = exc.message if isinstance(exc, StillroomError) else str(exc)
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs throughput)")] = False,
    debug: Debug = False,
) -> None:
    """Serve the OpenAI-compatible API (applies pending migrations first)."""
    import uvicorn

    from stillroom.app import create_app

    try:
        settings = _settings(database_url=database_url, config=config)
        for model in settings.load_models():  # fail here, in one line, on a bad config or a missing key
            model.api_key()
    except Exception as exc:  # the CLI edge
        _fail(exc, debug)
        return
    _configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        access_log=access_log,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """Apply pending migrations."""
    try:
        with _database(database_url):
            pass
    except Exception as exc:  # the CLI edge
        _fail(exc, debug)
    typer.echo("database is up to date")


@app.command()
def usage(database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """Bytes kept per project (completion rows plus shared message contents), against its quota: read from
    the running totals, so it answers at once however much is stored."""
    from stillroom.store.projects import usage_totals

    try:
        with _database(load_settings(database_url=database_url).database_url) as engine:
            totals = usage_totals(engine)
    except Exception as exc:  # the CLI edge
        _fail(exc, debug)
        return
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

    try:
        pairs = dict(_pair(item) for item in metadata or [])
        with (
            _database(database_url) as engine,
            output.open("wb") as out,
            Progress(SpinnerColumn(), TextColumn("{task.completed:,} rows")) as bar,
        ):
            task = bar.add_task("export")
            for row in iter_training_rows(engine, project, metadata=pairs, model=model):
                out.write(orjson.dumps(row) + b"\n")
                bar.advance(task)
    except Exception as exc:  # the CLI edge
        _fail(exc, debug)


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected key=value, got {item!r}")
    return key, value


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
