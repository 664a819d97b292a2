"""Who may call, resolved without a database round trip: a cached snapshot of projects and keys.

A poller thread reads the `access` counter (and each project's bytes in use) every `poll_interval` seconds;
when another process created or revoked a key, or changed a project, the counter moved and the snapshot is
reloaded. Changes made through this process reload it at once. So a revoked key stops working here at once,
and on every other server sharing the database within one poll (0.5 s by default, measured in
tests/auth/test_access.py).

The same thread flushes what requests only count in memory: each key's last use and the answers not stored.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pydantic import SecretStr

from stillroom.auth.keys import hash_key, is_api_key, key_prefix
from stillroom.auth.roles import EVERYTHING, ROLE_ACTIONS, Principal, Role, StorePolicy
from stillroom.auth.tokens import TokenVerifier, looks_like_jwt
from stillroom.errors import AuthenticationError, NotFoundError
from stillroom.store import projects as store
from stillroom.store.db import Engine
from stillroom.store.tables import DEFAULT_PROJECT

log = logging.getLogger("stillroom.auth")

_NO_KEY = "You didn't provide an API key. Provide it as 'Authorization: Bearer <key>' or 'api-key: <key>'."
_LAST_USED_EVERY = 10  # polls between flushes of keys' last use


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the request presented: a key or token, and the `OpenAI-Project` header."""

    secret: str | None
    project: str | None


class Access:
    def __init__(
        self,
        engine: Engine,
        server_key: SecretStr | None,
        tokens: TokenVerifier | None = None,
        *,
        poll_interval: float = 0.5,
        writes: store.Writes | None = None,
        on_poll: Callable[[], None] | None = None,
        storage_enabled: bool = True,
    ) -> None:
        self._engine = engine
        self._server_key = server_key.get_secret_value().encode() if server_key is not None else None
        self._tokens = tokens
        self._poll_interval = poll_interval
        self._writes = writes or store.direct_writes(engine)
        self._on_poll = on_poll
        self.storage_enabled = storage_enabled  # the server-wide switch; no project can override it
        self._snapshot = store.read_access_snapshot(engine)
        self.usage: dict[str, int] = {pid: p.used_bytes for pid, p in self._snapshot.projects.items()}
        self._last_used: dict[str, int] = {}
        self._not_stored: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="stillroom-access", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._flush(force=True)

    def refresh(self) -> None:
        """Reload now (after a change made through this process)."""
        self._snapshot = store.read_access_snapshot(self._engine)
        self.usage = {pid: p.used_bytes for pid, p in self._snapshot.projects.items()}

    def _poll(self) -> None:
        polls = 0
        while not self._stop.wait(self._poll_interval):
            polls += 1
            try:
                version, usage = store.read_access_version(self._engine)
                if version != self._snapshot.version:
                    self.refresh()
                else:
                    self.usage = usage
                if polls % _LAST_USED_EVERY == 0:
                    self._flush()
                if self._on_poll is not None:
                    self._on_poll()
            except Exception as exc:  # the edge of a worker thread: keep the last snapshot, retry next poll
                log.warning("refreshing keys and projects failed: %s", exc)

    def _flush(self, force: bool = False) -> None:
        with self._lock:
            last_used, self._last_used = self._last_used, {}
            not_stored, self._not_stored = self._not_stored, {}
        if not (last_used or not_stored):
            return
        try:
            self._writes(lambda conn: store.record_key_use(conn, last_used, not_stored))
        except Exception as exc:  # counters only: log and drop, never fail a request or a shutdown
            log.warning("recording key use failed: %s", exc)

    # --- lookups on the hot path ------------------------------------------------------------------

    def project(self, project_id: str) -> store.ProjectRow | None:
        return self._snapshot.projects.get(project_id)

    def is_open(self) -> bool:
        """Laptop mode: no server key, no project keys and no identity provider, so nobody signs in."""
        return self._server_key is None and not self._snapshot.keys and self._tokens is None

    def note_not_stored(self, project_id: str) -> None:
        with self._lock:
            self._not_stored[project_id] = self._not_stored.get(project_id, 0) + 1

    def is_slow(self, credentials: Credentials) -> bool:
        """Whether authenticating would check a signature (or fetch keys): better off the event loop."""
        secret = credentials.secret
        return (
            self._tokens is not None
            and secret is not None
            and looks_like_jwt(secret)
            and not self._tokens.is_cached(secret)
        )

    def scope(self, principal: Principal, project_id: str) -> Principal:
        """The principal acting on the project a path names: the server key on any project that exists,
        others on their own only. Another project is a 404, as if it did not exist."""
        if project_id not in self._snapshot.projects or not (
            principal.all_projects or principal.project_id == project_id
        ):
            raise NotFoundError(f"No project found with id '{project_id}'.", param="project_id")
        if principal.project_id == project_id:
            return principal
        return replace(principal, project_id=project_id)

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal for a request's credentials; raises AuthenticationError (401) or NotFoundError."""
        secret = credentials.secret
        if secret is None:
            if self.is_open():
                return self._everything(credentials.project, "anonymous")
            raise AuthenticationError(_NO_KEY)
        if self._server_key is not None and secrets.compare_digest(secret.encode(), self._server_key):
            return self._everything(credentials.project, "server-key")
        if is_api_key(secret):
            return self._key_principal(secret, credentials.project)
        if self._tokens is not None and looks_like_jwt(secret):
            claims = self._tokens.verify(secret)
            return self._everyone_checked(self._tokens.principal(claims), credentials.project)
        if self.is_open():  # laptop mode accepts any key, as before
            return self._everything(credentials.project, "anonymous")
        raise AuthenticationError("Incorrect API key provided.")

    def _everything(self, project_header: str | None, subject: str) -> Principal:
        project_id = project_header or DEFAULT_PROJECT
        if project_header is not None and project_header not in self._snapshot.projects:
            raise NotFoundError(f"No project found with id '{project_header}'.", code="project_not_found")
        return Principal(project_id, EVERYTHING, subject, all_projects=True)

    def _key_principal(self, secret: str, project_header: str | None) -> Principal:
        row = self._snapshot.keys.get(hash_key(secret))
        if row is None:
            raise AuthenticationError(f"Incorrect API key provided: {key_prefix(secret)}...")
        with self._lock:
            self._last_used[row.id] = int(time.time())
        policy = None
        if row.store_policy is not None:
            policy = StorePolicy(row.store_policy, row.sample_rate or 0.0, row.default_metadata or {})
        principal = Principal(
            row.project_id, ROLE_ACTIONS[Role(row.role)], row.prefix + "...", key_id=row.id, policy=policy
        )
        return self._everyone_checked(principal, project_header)

    def _everyone_checked(self, principal: Principal, project_header: str | None) -> Principal:
        if project_header is not None and project_header != principal.project_id:
            raise AuthenticationError(
                "OpenAI-Project header should match project for API key", code="mismatched_project"
            )
        if principal.project_id not in self._snapshot.projects:
            raise AuthenticationError(f"The project '{principal.project_id}' of this credential does not exist.")
        return principal
