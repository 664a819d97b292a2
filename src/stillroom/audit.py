"""Who did which action on what, when. Requests record events in memory; a background flush (about twice a
second) appends them in one transaction, and a read of the log flushes first."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from stillroom.auth.roles import Action, Principal
from stillroom.store import audit as store
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.wire.ids import new_sortable_id
from stillroom.wire.pages import render_page

log = logging.getLogger("stillroom.audit")

ORGANIZATION_LEVEL = frozenset({Action.ORGANIZATION})
NOT_AUDITED = frozenset({Action.PUBLIC, Action.MODELS, Action.INFERENCE})


class AuditLog:
    def __init__(self, writes: Writes, *, audit_reads: bool = True) -> None:
        self._writes = writes
        self._audit_reads = audit_reads
        self._pending: list[store.AuditEvent] = []
        self._lock = threading.Lock()

    def is_audited(self, action: Action) -> bool:
        if action in NOT_AUDITED:
            return False
        return self._audit_reads or action is not Action.READ

    def record(self, principal: Principal, action: Action, operation: str, target: str, *, allowed: bool) -> None:
        project_id = None if action in ORGANIZATION_LEVEL else principal.project_id
        event = store.AuditEvent(
            new_sortable_id("audit_"),
            project_id,
            int(time.time()),
            principal.subject,
            action.value,
            operation,
            target[:512],
            "allowed" if allowed else "denied",
        )
        with self._lock:
            self._pending.append(event)

    def flush(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
        try:
            if events:
                self._writes(lambda conn: store.append_events(conn, events))
        except Exception:
            with self._lock:  # keep them for the next flush
                self._pending[:0] = events
            raise

    def flush_quietly(self) -> None:
        """The background flush: a failure is logged and retried next time."""
        try:
            self.flush()
        except Exception as exc:  # the edge of a worker thread
            log.warning("writing the audit log failed (will retry): %s", exc)


def list_audit_events(engine: Engine, project_id: str | None, *, after: str | None, limit: int) -> dict[str, Any]:
    events, has_more = store.list_events(engine, project_id, after=after, limit=limit)
    data = [
        {
            "object": "organization.audit_log",
            "id": e.id,
            "project_id": e.project_id,
            "effective_at": e.created,
            "actor": e.actor,
            "action": e.action,
            "operation": e.operation,
            "target": e.target,
            "outcome": e.outcome,
        }
        for e in events
    ]
    return render_page(data, has_more)
