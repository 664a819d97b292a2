"""Projects as the admin API presents them: create, list, retrieve, modify, delete; bulk deletes of stored
completions by filter (with a dry run)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from stillroom.auth.roles import StorePolicy
from stillroom.errors import BadRequestError, ConflictError, NotFoundError
from stillroom.store import projects as store
from stillroom.store import purge
from stillroom.store.blobs import FileStorage
from stillroom.store.db import Engine
from stillroom.stored import FILTER_FIELDS, catch_up_search, parse_stored_filter
from stillroom.wire.chat import validate_metadata
from stillroom.wire.ids import completion_id_floor, new_project_id

log = logging.getLogger("stillroom.projects")

POLICY_MODES = ("request", "all", "sample")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
DELETE_BATCH = 1000


def render_project(row: store.ProjectRow, *, server_storage: bool = True) -> dict[str, Any]:
    """OpenAI's project object, plus quota, usage, the storage switch, store policy and retention."""
    return {
        "object": "organization.project",
        "id": row.id,
        "name": row.name,
        "created_at": row.created,
        "archived_at": None,
        "status": "active",
        "quota_bytes": row.quota_bytes,
        "usage_bytes": row.used_bytes,
        "not_stored": row.not_stored,
        "storage_enabled": row.storage_enabled,
        "storage_effective": row.storage_enabled and server_storage,
        "store_policy": {"mode": row.store_policy, "sample_rate": row.sample_rate, "metadata": row.default_metadata},
        "retention_days": row.retention_days,
    }


def create_project(
    writes: store.Writes, name: Any, *, project_id: str | None = None, quota_bytes: int = store.DEFAULT_QUOTA_BYTES
) -> store.ProjectRow:
    name = _name(name)
    project_id = _project_id(project_id) if project_id is not None else new_project_id()
    quota = _quota(quota_bytes)
    row = writes(lambda conn: store.create_project(conn, project_id, name, int(time.time()), quota))
    if row is None:
        raise ConflictError(f"A project with id '{project_id}' already exists.", param="id")
    return row


def get_project(engine: Engine, project_id: str) -> store.ProjectRow:
    row = store.get_project(engine, project_id)
    if row is None:
        raise _not_found(project_id)
    return row


def list_projects(engine: Engine) -> list[store.ProjectRow]:
    return store.list_projects(engine)


def modify_project(writes: store.Writes, project_id: str, body: dict[str, Any]) -> store.ProjectRow:
    """Change any of name, quota_bytes, storage_enabled, store_policy, retention_days."""
    known = {"name", "quota_bytes", "storage_enabled", "store_policy", "retention_days"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequestError(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0])
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _name(body["name"])
    if "quota_bytes" in body:
        changes["quota_bytes"] = _quota(body["quota_bytes"])
    if "storage_enabled" in body:
        if not isinstance(body["storage_enabled"], bool):
            raise BadRequestError("Invalid 'storage_enabled': expected a boolean.", param="storage_enabled")
        changes["storage_enabled"] = body["storage_enabled"]
    if "store_policy" in body:
        policy = parse_policy(body["store_policy"], "store_policy")
        changes |= {"store_policy": policy.mode, "sample_rate": policy.sample_rate, "default_metadata": policy.metadata}
    if "retention_days" in body:
        changes["retention_days"] = _retention(body["retention_days"])
    row = writes(lambda conn: store.update_project(conn, project_id, changes))
    if row is None:
        raise _not_found(project_id)
    return row


def delete_project(writes: store.Writes, storage: FileStorage, project_id: str) -> dict[str, Any]:
    """Delete the project and everything it holds: its rows in every table (the counts per table), then,
    once that has committed, its files' bytes."""
    deleted = writes(lambda conn: purge.delete_project(conn, project_id))
    if deleted is None:
        raise _not_found(project_id)
    for key in deleted.storage_keys:
        try:
            storage.delete(key)
        except OSError as exc:  # the rows are gone, so nothing refers to these bytes: log, go on
            log.warning("deleting project %s: cannot free file %s: %s", project_id, key, exc)
    return {
        "object": "organization.project.deleted",
        "id": project_id,
        "deleted": True,
        "rows": deleted.rows,
        "files": len(deleted.storage_keys),
    }


def parse_policy(value: Any, param: str) -> StorePolicy:
    """`{"mode": "request"|"all"|"sample", "sample_rate": 0..1, "metadata": {...}}`."""
    if not isinstance(value, dict):
        raise BadRequestError(f"Invalid '{param}': expected an object.", param=param)
    mode = value.get("mode", "request")
    if mode not in POLICY_MODES:
        raise BadRequestError(
            f"Invalid '{param}.mode': expected one of {', '.join(POLICY_MODES)}.", param=f"{param}.mode"
        )
    rate = value.get("sample_rate", 1.0 if mode == "all" else 0.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1 or math.isnan(rate):
        raise BadRequestError(f"Invalid '{param}.sample_rate': expected 0 to 1.", param=f"{param}.sample_rate")
    defaults = validate_metadata(value.get("metadata") or {}, f"{param}.metadata") or {}
    return StorePolicy(mode, float(rate), defaults)


def delete_chat_completions(
    engine: Engine, writes: store.Writes, project_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Delete every stored completion matching a filter (metadata pairs, model, created range, full-text
    search), in batches; with `dry_run: true`, only count them."""
    known = {*FILTER_FIELDS, "dry_run"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequestError(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0])
    selection = _filter(body)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequestError("Invalid 'dry_run': expected a boolean.", param="dry_run")
    catch_up_search(engine, writes, selection.search)
    if dry_run:
        count = purge.count_completions(engine, project_id, selection)
    else:
        count = 0
        while True:
            done = writes(lambda conn: purge.delete_completions_batch(conn, project_id, selection, DELETE_BATCH))
            count += done
            if done < DELETE_BATCH:
                break
    return {
        "object": "chat.completion.deleted_many",
        "deleted": 0 if dry_run else count,
        "matched": count,
        "dry_run": dry_run,
    }


def _filter(body: dict[str, Any]) -> purge.CompletionFilter:
    """The list's filter (stillroom.stored.parse_stored_filter), of which at least one field must be set."""
    selection = parse_stored_filter(body)
    if selection.is_empty():
        raise BadRequestError(
            "Give at least one of 'metadata', 'model', 'created_after', 'created_before' or 'search'.",
            param="metadata",
        )
    bounds = [None if us is None else completion_id_floor(us) for us in selection.time_range]
    pairs = tuple(sorted(selection.metadata.items()))
    return purge.CompletionFilter(pairs, selection.model, bounds[0], bounds[1], selection.search)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise BadRequestError("Invalid 'name': expected 1 to 256 characters.", param="name")
    return value.strip()


def _project_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _ID_CHARS:
        raise BadRequestError("Invalid 'id': 1 to 64 letters, digits, '_' or '-'.", param="id")
    return value


def _quota(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError("Invalid 'quota_bytes': expected a non-negative integer.", param="quota_bytes")
    return value


def _retention(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequestError("Invalid 'retention_days': expected a positive integer or null.", param="retention_days")
    return value


def _not_found(project_id: str) -> NotFoundError:
    return NotFoundError(f"No project found with id '{project_id}'.", param="project_id")
