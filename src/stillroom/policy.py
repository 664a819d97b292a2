"""Whether a chat request is stored: what it asked, the key's or project's store policy, the storage switches
and the quota. Decided before anything goes upstream, from the cached project (no database round trip)."""

from __future__ import annotations

import random
from dataclasses import replace

from stillroom.auth.access import Access
from stillroom.auth.roles import Principal, StorePolicy
from stillroom.wire.chat import ChatRequest

MAX_METADATA = 16
STORAGE_DISABLED = "storage_disabled"
QUOTA_EXCEEDED = "quota_exceeded"
STORE_FAILED = "store_failed"


def decide_store(access: Access, request: ChatRequest, principal: Principal) -> tuple[ChatRequest, str | None]:
    """The request as it will be handled (`store` and `metadata` settled), and why it will not be stored when
    it wanted to be (None otherwise)."""
    project = access.project(principal.project_id)
    asked = request.body.get("store")
    policy = principal.policy
    if policy is None and project is not None:
        policy = StorePolicy(project.store_policy, project.sample_rate, project.default_metadata)
    wants = bool(asked) if asked is not None else _by_policy(policy)
    if not wants:
        return (replace(request, store=False) if request.store else request), None
    reason = None
    if not access.storage_enabled or (project is not None and not project.storage_enabled):
        reason = STORAGE_DISABLED
    elif project is not None and access.usage.get(project.id, project.used_bytes) >= project.quota_bytes:
        reason = QUOTA_EXCEEDED
    if reason is not None:
        access.note_not_stored(principal.project_id)
        return replace(request, store=False), reason
    metadata = _with_defaults(request.metadata, project.default_metadata if project else {}, principal.policy)
    if request.store and metadata is request.metadata:
        return request, None
    return replace(request, store=True, metadata=metadata), None


def _by_policy(policy: StorePolicy | None) -> bool:
    if policy is None or policy.mode == "request":
        return False
    return policy.mode == "all" or random.random() < policy.sample_rate


def _with_defaults(
    own: dict[str, str] | None, project_defaults: dict[str, str], key_policy: StorePolicy | None
) -> dict[str, str] | None:
    """Default metadata under the request's own (the request's pairs win; at most 16 pairs in all)."""
    defaults = {**project_defaults, **(key_policy.metadata if key_policy else {})}
    if not defaults:
        return own
    merged = dict(own or {})
    for key, value in defaults.items():
        if key not in merged and len(merged) < MAX_METADATA:
            merged[key] = value
    return merged
