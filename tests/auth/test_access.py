"""The cached key snapshot across processes: a key revoked through one `serve` (or the CLI) is refused by
another `serve` sharing the database within one second, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from tests.admin import ADMIN, bearer, fake_upstream, two_servers
from tests.envelope import assert_openai_error
from tests.live import LiveServer

__all__ = ["fake_upstream", "two_servers"]


def _until(check: Callable[[], bool], within: float) -> bool:
    """Poll `check` until it holds or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            return check()
        time.sleep(0.02)
    return True


def _list(server: LiveServer, key: str) -> httpx.Response:
    return httpx.get(server.url + "/v1/chat/completions", headers=bearer(key), timeout=5)


def _project_with_key(server: LiveServer) -> tuple[str, str, str]:
    made = httpx.post(server.url + "/v1/organization/projects", json={"name": "revocation"}, headers=ADMIN)
    assert made.status_code == 200, made.text
    project_id = made.json()["id"]
    issued = httpx.post(
        f"{server.url}/v1/organization/projects/{project_id}/api_keys", json={"role": "reader"}, headers=ADMIN
    )
    assert issued.status_code == 200, issued.text
    return project_id, issued.json()["value"], issued.json()["id"]


def _refused_within_a_second(server: LiveServer, key: str) -> None:
    assert _until(lambda: _list(server, key).status_code == 401, within=1.0), "still accepted after 1 s"
    assert_openai_error(_list(server, key), 401, "invalid_request_error")


def test_a_key_revoked_through_one_server_is_refused_by_another_within_a_second(
    two_servers: tuple[LiveServer, LiveServer],
) -> None:
    one, other = two_servers
    project_id, key, key_id = _project_with_key(one)
    assert _until(lambda: _list(other, key).status_code == 200, within=5), "the other server never saw the key"
    revoked = httpx.delete(f"{one.url}/v1/organization/projects/{project_id}/api_keys/{key_id}", headers=ADMIN)
    assert revoked.status_code == 200, revoked.text
    assert_openai_error(_list(one, key), 401, "invalid_request_error")  # at once where it was revoked
    _refused_within_a_second(other, key)


def test_a_key_revoked_by_the_cli_is_refused_by_every_server_within_a_second(
    two_servers: tuple[LiveServer, LiveServer],
) -> None:
    one = two_servers[0]
    project_id, key, key_id = _project_with_key(one)
    assert _until(lambda: all(_list(s, key).status_code == 200 for s in two_servers), within=5)
    cli = [sys.executable, "-m", "stillroom", "keys", "revoke", "--project", project_id, key_id]
    done = subprocess.run([*cli, "--database-url", one.database_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked {key_id}"
    refused = _until(lambda: all(_list(s, key).status_code == 401 for s in two_servers), within=1.0)
    assert refused, "a server still accepted the key 1 s after the CLI revoked it"
    for server in two_servers:
        assert_openai_error(_list(server, key), 401, "invalid_request_error")
