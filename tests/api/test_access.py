"""Who may call what: the route table, the role x route matrix, cross-project isolation, the server key and
the OpenAI-Project header, laptop mode."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest
from starlette.testclient import TestClient

from stillroom.auth.roles import OPERATION_ACTIONS, ROLE_ACTIONS, Action, Role
from stillroom.store.completions import count_rows
from stillroom.store.db import make_engine
from tests.admin import ADMIN, CHAT, SERVER_KEY, bearer, fake_upstream, make_client, new_key, new_project
from tests.conftest import PG_ADMIN
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream

__all__ = ["fake_upstream"]


@pytest.fixture(scope="module")
def client(db_url: str, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("access"), fake_upstream, db_url) as c:
        yield c


def _routes(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, path, operation) of every route of the app, included routers flattened (FastAPI keeps those
    as lazily built contexts; `effective_route_contexts` is how its own url_path_for walks them)."""
    found = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [None]
        for context in contexts:
            original = route if context is None else context.original_route
            if context is None:
                path = getattr(route, "path", None)
            else:
                path = context.path or getattr(context.starlette_route, "path", None)
            endpoint = getattr(original, "endpoint", None)
            if path is None or endpoint is None:
                continue
            for method in sorted((getattr(original, "methods", None) or set()) - {"HEAD"}):
                found.append((method, path, endpoint.__name__))
    assert len(found) > 20
    return found


def test_every_route_of_the_app_declares_its_action(client: TestClient) -> None:
    operations = {operation for _, _, operation in _routes(client)}
    assert operations - set(OPERATION_ACTIONS) == set(), "routes missing from auth/roles.py OPERATION_ACTIONS"
    assert set(OPERATION_ACTIONS) - operations == set(), "stale entries in OPERATION_ACTIONS"


def test_docs_access_lists_every_operation_with_its_action() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "access.md").read_text()
    rows = set(re.findall(r"^\| `[A-Z]+` \| `[^`]+` \| `(\w+)` \| `([\w/-]+)` \|$", page, flags=re.MULTILINE))
    assert rows == {(operation, action.value) for operation, action in OPERATION_ACTIONS.items()}


def _fill(path: str, project_id: str) -> str:
    """Concrete path: the key's own project, the configured model, and ids that do not exist."""
    known = {"project_id": project_id, "deployment": "fake", "model": "fake", "completion_id": "chatcmpl-nosuch"}
    return re.sub(r"\{(\w+)\}", lambda m: known.get(m.group(1), f"nosuch-{m.group(1)}"), path)


ROLES = [role.value for role in Role]


@pytest.mark.parametrize("role", ROLES)
def test_role_route_matrix(client: TestClient, role: str) -> None:
    """Every route, for a key of each role: 403 in the envelope when the role lacks the route's action,
    otherwise anything but 401/403 (bodies are empty, so nothing is run or stored)."""
    project_id = new_project(client)
    key = new_key(client, project_id, role)
    engine = make_engine(str(client.app.state.services.settings.database_url))  # type: ignore[attr-defined]
    before = count_rows(engine)
    for method, path, operation in _routes(client):
        action = OPERATION_ACTIONS[operation]
        if action is Action.PUBLIC:
            continue
        response = client.request(method, _fill(path, project_id), headers=bearer(key), json={})
        if action in ROLE_ACTIONS[Role(role)]:
            assert response.status_code not in (401, 403), (method, path, response.text)
        else:
            error = assert_openai_error(response, 403, "invalid_request_error")
            assert error["code"] == "permission_denied", (method, path)
    assert count_rows(engine) == before
    engine.dispose()


@pytest.mark.parametrize("role", ROLES)
def test_me_names_each_keys_project_role_and_actions(client: TestClient, role: str) -> None:
    project_id = new_project(client)
    me = client.get("/v1/me", headers=bearer(new_key(client, project_id, role)))
    assert me.status_code == 200, me.text
    assert me.json() == {
        "object": "principal",
        "project_id": project_id,
        "role": role,
        "actions": sorted(a.value for a in ROLE_ACTIONS[Role(role)]),
        "subject": me.json()["subject"],
        "all_projects": False,
    }
    assert me.json()["subject"].endswith("...")


def test_me_for_the_server_key_and_without_a_key(client: TestClient) -> None:
    me = client.get("/v1/me", headers=ADMIN).json()
    assert (me["role"], me["subject"], me["all_projects"]) == ("owner", "server-key", True)
    assert set(me["actions"]) == {a.value for a in Action}
    assert_openai_error(client.get("/v1/me"), 401, "invalid_request_error")


def test_a_project_key_never_sees_another_projects_completions(client: TestClient) -> None:
    a, b = new_project(client), new_project(client)
    writer = new_key(client, a, "contributor")
    made = client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=bearer(writer))
    assert made.status_code == 200 and made.headers["x-stillroom-stored"] == "true", made.text
    cid = made.json()["id"]
    assert client.get(f"/v1/chat/completions/{cid}", headers=bearer(writer)).status_code == 200
    other = bearer(new_key(client, b, "admin"))
    for method, path in [
        ("GET", f"/v1/chat/completions/{cid}"),
        ("GET", f"/v1/chat/completions/{cid}/messages"),
        ("POST", f"/v1/chat/completions/{cid}"),
        ("DELETE", f"/v1/chat/completions/{cid}"),
        ("GET", f"/v1/organization/projects/{a}"),
        ("GET", f"/v1/organization/projects/{a}/api_keys"),
        ("GET", f"/v1/organization/projects/{a}/audit_logs"),
        ("POST", f"/v1/organization/projects/{a}/chat_completions/delete"),
    ]:
        response = client.request(method, path, headers=other, json={"metadata": {"k": "v"}})
        assert_openai_error(response, 404, "invalid_request_error", response.json()["error"]["param"])
    listed = client.get("/v1/chat/completions", headers=other, params={"limit": 100}).json()
    assert cid not in [c["id"] for c in listed["data"]]
    assert client.get(f"/v1/chat/completions/{cid}", headers=bearer(writer)).status_code == 200  # still there


def test_server_key_selects_the_project_with_the_sdk_project_option(client: TestClient) -> None:
    project_id = new_project(client)
    # The SDK over the in-process app (not closed here: closing it would close the shared test client).
    sdk = openai.OpenAI(
        base_url="http://testserver/v1", api_key=SERVER_KEY, project=project_id, http_client=client, max_retries=0
    )
    made = sdk.chat.completions.create(model="fake", messages=[{"role": "user", "content": "Hi"}], store=True)
    assert [c.id for c in sdk.chat.completions.list()] == [made.id]
    in_default = client.get("/v1/chat/completions", headers=ADMIN, params={"limit": 100}).json()["data"]
    assert made.id not in [c["id"] for c in in_default]
    elsewhere = sdk.with_options(project="p-missing")
    with pytest.raises(openai.NotFoundError):
        elsewhere.chat.completions.list()


def test_a_project_key_with_another_projects_header_is_401(client: TestClient) -> None:
    a, b = new_project(client), new_project(client)
    key = new_key(client, a, "reader")
    response = client.get("/v1/chat/completions", headers=bearer(key) | {"openai-project": b})
    assert assert_openai_error(response, 401, "invalid_request_error")["code"] == "mismatched_project"


def test_unknown_and_revoked_keys_are_401_at_once(client: TestClient) -> None:
    project_id = new_project(client)
    key = new_key(client, project_id, "reader")
    assert client.get("/v1/chat/completions", headers=bearer(key)).status_code == 200
    keys = client.get(f"/v1/organization/projects/{project_id}/api_keys", headers=ADMIN).json()["data"]
    assert [(k["role"], k["redacted_value"]) for k in keys] == [("reader", key[:12] + "...")]
    assert "value" not in keys[0]
    revoked = client.delete(f"/v1/organization/projects/{project_id}/api_keys/{keys[0]['id']}", headers=ADMIN)
    assert revoked.json() == {"object": "organization.project.api_key.deleted", "id": keys[0]["id"], "deleted": True}
    assert_openai_error(client.get("/v1/chat/completions", headers=bearer(key)), 401, "invalid_request_error")
    assert_openai_error(client.get("/v1/chat/completions", headers=bearer("sk-sr-nope")), 401, "invalid_request_error")


def test_only_a_hash_of_a_key_is_kept(client: TestClient) -> None:
    project_id = new_project(client)
    key = new_key(client, project_id, "admin")
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        dump = "\n".join(
            str(tuple(row))
            for table in ("api_keys", "audit_events", "projects")
            for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert key not in dump and key[12:] not in dump


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'laptop.db'}"
        return
    name = f"stillroom_laptop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_laptop_mode_needs_no_key_until_a_project_key_exists(
    empty_db_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    with make_client(tmp_path, fake_upstream, empty_db_url, api_key=None) as client:
        made = client.post("/v1/chat/completions", json=CHAT | {"store": True})
        assert made.status_code == 200 and made.headers["x-stillroom-stored"] == "true"
        listed = client.get("/v1/chat/completions").json()["data"]
        assert [c["id"] for c in listed] == [made.json()["id"]]  # in the default project
        key = client.post("/v1/organization/projects/default/api_keys", json={"role": "reader"}).json()["value"]
        assert_openai_error(client.get("/v1/chat/completions"), 401, "invalid_request_error")
        assert client.get("/v1/chat/completions", headers=bearer(key)).status_code == 200
