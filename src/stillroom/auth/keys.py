"""API keys: issue (shown once), hash (only the hash is kept), list, revoke."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from stillroom.auth.roles import Role, StorePolicy
from stillroom.errors import NotFoundError
from stillroom.store import projects as store
from stillroom.store.db import Engine
from stillroom.wire.ids import new_key_id

KEY_PREFIX = "sk-sr-"
_SHOWN = len(KEY_PREFIX) + 6  # characters of a key that lists and the audit log show


def hash_key(key: str) -> str:
    """SHA-256 is enough: keys are 256 random bits, so there is nothing to brute-force."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    return key[:_SHOWN]


def is_api_key(presented: str) -> bool:
    return presented.startswith(KEY_PREFIX)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str  # the only time the plain key exists
    row: store.KeyRow


def issue_key(
    writes: store.Writes,
    project_id: str,
    role: Role,
    *,
    name: str = "",
    policy: StorePolicy | None = None,
) -> IssuedKey:
    """Create a key of `role` in an existing project; the plain key is returned once and never kept."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    values: dict[str, Any] = {
        "id": new_key_id(),
        "project_id": project_id,
        "name": name,
        "role": role.value,
        "prefix": key_prefix(key),
        "hash": hash_key(key),
        "created": int(time.time()),
        "last_used": None,
        "store_policy": policy.mode if policy else None,
        "sample_rate": policy.sample_rate if policy else None,
        "default_metadata": policy.metadata if policy else None,
    }
    row = writes(lambda conn: store.insert_key(conn, values))
    if row is None:
        raise NotFoundError(f"No project found with id '{project_id}'.", param="project_id")
    return IssuedKey(key, row)


def list_keys(engine: Engine, project_id: str) -> list[dict[str, Any]]:
    return [render_key(row) for row in store.list_keys(engine, project_id)]


def revoke_key(writes: store.Writes, project_id: str, key_id: str) -> dict[str, Any]:
    if not writes(lambda conn: store.delete_key(conn, project_id, key_id)):
        raise NotFoundError(f"No API key found with id '{key_id}'.", param="key_id")
    return {"object": "organization.project.api_key.deleted", "id": key_id, "deleted": True}


def render_key(row: store.KeyRow) -> dict[str, Any]:
    """OpenAI's project API key object, plus the role and store policy."""
    policy = None
    if row.store_policy is not None:
        policy = {"mode": row.store_policy, "sample_rate": row.sample_rate, "metadata": row.default_metadata or {}}
    return {
        "object": "organization.project.api_key",
        "id": row.id,
        "name": row.name,
        "redacted_value": row.prefix + "...",
        "created_at": row.created,
        "last_used_at": row.last_used,
        "role": row.role,
        "project_id": row.project_id,
        "store_policy": policy,
    }
