"""The CLI edge every `stillroom` command shares (cli.py, cli_admin.py, cli_jobs.py, cli_evals.py): the common
options, opening the database, and failing in one `error:` line with exit status 1 (`--debug`: the traceback).

    with database(database_url, debug) as engine:   # settings, connect, migrate, and the command's own work:
        ...                                         # any failure is one line naming its cause
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from stillroom.config import Settings, load_settings, redact_url
from stillroom.errors import ConfigError, StillroomError

if TYPE_CHECKING:
    from stillroom.store.db import Engine

DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL (env STILLROOM_DATABASE_URL)")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML model list (env STILLROOM_CONFIG)", dir_okay=False)
]
Debug = Annotated[bool, typer.Option(help="Show tracebacks")]


@contextmanager
def open_database(database_url: str) -> Iterator[Engine]:
    """The database, migrated to the current schema, closed afterwards; failing to reach or migrate it is a
    ConfigError naming it (password redacted)."""
    from stillroom.store.db import make_engine
    from stillroom.store.migrate import upgrade_database

    engine = None
    try:
        engine = make_engine(database_url)
        upgrade_database(engine)
    except Exception as exc:
        if engine is not None:
            engine.dispose()
        raise ConfigError(f"cannot use the database {redact_url(database_url)}: {reason(exc)}") from exc
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def database(database_url: str | None, debug: bool) -> Iterator[Engine]:
    """The configured database (`--database-url`, else STILLROOM_DATABASE_URL), migrated; a failure to open it
    or in the command's own work inside the block is one `error:` line and exit 1."""
    with failing_in_one_line(debug), open_database(load_settings(database_url=database_url).database_url) as engine:
        yield engine


def load_settings_or_fail(debug: bool, **overrides: Any) -> Settings:
    """Settings from the environment and `overrides` (None: not given); a bad one is one `error:` line."""
    try:
        return load_settings(**overrides)
    except Exception as exc:  # the CLI edge
        fail(exc, debug)


@contextmanager
def failing_in_one_line(debug: bool) -> Iterator[None]:
    """The CLI edge: anything raised inside becomes one `error:` line and exit 1 (typer's own exits pass)."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # the CLI edge
        fail(exc, debug)


def fail(exc: Exception, debug: bool) -> NoReturn:
    if debug:
        raise exc
    message = exc.message if isinstance(exc, StillroomError) else reason(exc)
    # Text, not markup: a message may hold brackets (`[[models]]`); soft_wrap keeps it on one line.
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error:", "red"), " ", " ".join(message.split())))
    raise typer.Exit(1)


def reason(exc: BaseException) -> str:
    """What went wrong, on one line: the driver's own message where SQLAlchemy wrapped one."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        text = str(orig)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def parse_pairs(items: list[str] | None) -> dict[str, str]:
    """`--metadata key=value` options as a dict; anything else is a usage error."""
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}")
        pairs[key] = value
    return pairs


def format_time(ts: float | None) -> str:
    """A Unix time as UTC `YYYY-MM-DD HH:MM:SS`; `-` for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"
