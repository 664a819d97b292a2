"""`stillroom projects`, `stillroom keys`, `stillroom completions delete`, `stillroom audit`: the admin commands,
run straight against the database (no server needed). Each takes `--database-url` or STILLROOM_DATABASE_URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from stillroom.cli_edge import DatabaseUrl, Debug, database, format_time, parse_pairs
from stillroom.config import Settings

if TYPE_CHECKING:
    from stillroom.store.db import Engine

projects_app = typer.Typer(help="Projects: create, list, rename, delete.", no_args_is_help=True)
keys_app = typer.Typer(help="Project API keys: create, list, revoke.", no_args_is_help=True)
completions_app = typer.Typer(help="Stored completions in bulk.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)

ProjectOption = Annotated[str, typer.Option("--project", "-p", help="Project id")]


def _writes(engine: Engine) -> Any:
    from stillroom.store.projects import direct_writes

    return direct_writes(engine)


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Display name")],
    project_id: Annotated[str | None, typer.Option("--id", help="Project id (default: proj_ + random)")] = None,
    quota_bytes: Annotated[int | None, typer.Option(help="Stored-data quota in bytes (default 10 GB)")] = None,
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Create a project and print its id."""
    from stillroom.projects import create_project

    with database(database_url, debug) as engine:
        quota = quota_bytes if quota_bytes is not None else Settings.model_validate({}).default_quota_bytes
        row = create_project(_writes(engine), name, project_id=project_id, quota_bytes=quota)
    typer.echo(row.id)


@projects_app.command("list")
def projects_list(database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """Projects with their usage, quota, storage switch, store policy and retention."""
    from stillroom.projects import list_projects

    with database(database_url, debug) as engine:
        rows = list_projects(engine)
    table = Table("id", "name", "used bytes", "quota bytes", "storage", "policy", "retention days")
    for row in rows:
        policy = row.store_policy if row.store_policy != "sample" else f"sample {row.sample_rate:g}"
        storage = "on" if row.storage_enabled else "off"
        retention = str(row.retention_days or "-")
        table.add_row(row.id, row.name, f"{row.used_bytes:,}", f"{row.quota_bytes:,}", storage, policy, retention)
    Console().print(table)


@projects_app.command("rename")
def projects_rename(
    project: Annotated[str, typer.Argument(help="Project id")],
    name: Annotated[str, typer.Argument(help="New display name")],
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Rename a project."""
    from stillroom.projects import modify_project

    with database(database_url, debug) as engine:
        modify_project(_writes(engine), project, {"name": name})
    typer.echo(f"renamed {project}")


@projects_app.command("set")
def projects_set(
    project: Annotated[str, typer.Argument(help="Project id")],
    quota_bytes: Annotated[int | None, typer.Option(help="Stored-data quota in bytes")] = None,
    storage: Annotated[bool | None, typer.Option("--storage/--no-storage", help="Storage switch")] = None,
    retention_days: Annotated[
        int | None, typer.Option(help="Delete stored completions older than this (0: never)")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help='Store policy as JSON, e.g. {"mode": "sample", "sample_rate": 0.1}')
    ] = None,
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Change a project's quota, storage switch, retention or store policy."""
    from stillroom.projects import modify_project

    body: dict[str, Any] = {}
    if quota_bytes is not None:
        body["quota_bytes"] = quota_bytes
    if storage is not None:
        body["storage_enabled"] = storage
    if retention_days is not None:
        body["retention_days"] = retention_days or None
    with database(database_url, debug) as engine:
        if policy is not None:
            body["store_policy"] = orjson.loads(policy)
        modify_project(_writes(engine), project, body)
    typer.echo(f"updated {project}")


@projects_app.command("delete")
def projects_delete(
    project: Annotated[str, typer.Argument(help="Project id")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Delete a project and everything it holds (completions, messages, keys, audit log, jobs, and files, in
    STILLROOM_FILES_DIR too)."""
    from stillroom.projects import delete_project
    from stillroom.store.blobs import LocalFileStorage

    if not yes:
        typer.confirm(f"Delete project {project} and everything it holds?", abort=True)
    with database(database_url, debug) as engine:
        result = delete_project(_writes(engine), LocalFileStorage(Settings.model_validate({}).files_dir), project)
    typer.echo(f"deleted {project}: {sum(result['rows'].values())} rows; files freed: {result['files']}")


@keys_app.command("create")
def keys_create(
    project: ProjectOption,
    role: Annotated[str, typer.Option(help="reader, contributor, inference or admin")],
    name: Annotated[str, typer.Option(help="A name for the key")] = "",
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Create a key and print it, alone on stdout, once (only its hash is kept)."""
    from stillroom.auth.keys import issue_key
    from stillroom.auth.roles import parse_role

    with database(database_url, debug) as engine:
        issued = issue_key(_writes(engine), project, parse_role(role), name=name)
    typer.echo(issued.key)


@keys_app.command("list")
def keys_list(project: ProjectOption, database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """A project's keys: id, prefix, role, created, last used."""
    from stillroom.store.projects import list_keys

    with database(database_url, debug) as engine:
        rows = list_keys(engine, project)
    table = Table("id", "key", "role", "name", "created", "last used")
    for row in rows:
        table.add_row(
            row.id, row.prefix + "...", row.role, row.name, format_time(row.created), format_time(row.last_used)
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    project: ProjectOption,
    key_id: Annotated[str, typer.Argument(help="Key id (key_...)")],
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Revoke a key: every server sharing the database refuses it within a second."""
    from stillroom.auth.keys import revoke_key

    with database(database_url, debug) as engine:
        revoke_key(_writes(engine), project, key_id)
    typer.echo(f"revoked {key_id}")


@completions_app.command("delete")
def completions_delete(
    project: ProjectOption,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="key=value, repeatable")] = None,
    model: Annotated[str | None, typer.Option(help="Only completions asked of this model")] = None,
    created_after: Annotated[float | None, typer.Option(help="Unix time: created at or after")] = None,
    created_before: Annotated[float | None, typer.Option(help="Unix time: created before")] = None,
    search: Annotated[str | None, typer.Option(help="Words in the messages or the answer (as the list's)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted")] = False,
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """Delete the stored completions matching every filter given (or count them with --dry-run)."""
    from stillroom.projects import delete_chat_completions

    pairs = parse_pairs(metadata)
    body: dict[str, Any] = {"dry_run": dry_run}
    filters: tuple[tuple[str, Any], ...] = (
        ("metadata", pairs or None),
        ("model", model),
        ("created_after", created_after),
        ("created_before", created_before),
        ("search", search),
    )
    for field, value in filters:
        if value is not None:
            body[field] = value
    with database(database_url, debug) as engine:
        result = delete_chat_completions(engine, _writes(engine), project, body)
    typer.echo(f"would delete {result['matched']}" if dry_run else f"deleted {result['deleted']}")


@audit_app.command("list")
def audit_list(
    project: ProjectOption,
    limit: Annotated[int, typer.Option(help="Most events to show, newest first")] = 50,
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """A project's audit events, newest first: when, who, action, operation, target, outcome."""
    from stillroom.audit import list_audit_events

    with database(database_url, debug) as engine:
        page = list_audit_events(engine, project, after=None, limit=max(1, min(limit, 1000)))
    table = Table("when", "who", "action", "operation", "target", "outcome")
    for e in page["data"]:
        table.add_row(
            format_time(e["effective_at"]), e["actor"], e["action"], e["operation"], e["target"], e["outcome"]
        )
    Console().print(table)
