"""Signing in to the console with an identity-provider token (an OIDC JWT, as Entra ID issues them) in a real
browser: the token's project and role decide what the console shows; a bad or expired token shows the
server's message, and so does a token that expires while the tab holds it (at the next load)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.auth.test_tokens import AUDIENCE, ISSUER, READER_ROLE, Signer, jwks
from tests.conftest import GATEWAY_KEY
from tests.live import LiveServer, start_server
from tests.web.conftest import CONSOLE_CONFIG, sign_in

ADMIN_ROLE = "Stillroom.Admin"
TENANT = str(uuid.uuid4())
PROJECT = f"p-{uuid.uuid4().hex[:12]}"
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer("RS256")


@pytest.fixture(scope="module")
def oidc_server(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[LiveServer]:
    """A gateway that takes the test's tokens (a JWKS file), mapping TENANT to PROJECT."""
    tmp = tmp_path_factory.mktemp("console-oidc")
    keys = tmp / "jwks.json"
    keys.write_text(json.dumps(jwks(signer)))
    env = {
        "STILLROOM_OIDC_ISSUERS": json.dumps([ISSUER]),
        "STILLROOM_OIDC_AUDIENCE": AUDIENCE,
        "STILLROOM_OIDC_JWKS_FILE": str(keys),
        "STILLROOM_OIDC_PROJECT_MAP": json.dumps({TENANT: PROJECT}),
        "STILLROOM_OIDC_ROLE_MAP": json.dumps({READER_ROLE: "reader", ADMIN_ROLE: "admin"}),
    }
    live = start_server(
        tmp, f"sqlite:///{tmp / 'oidc.db'}", config=CONSOLE_CONFIG, api_key=GATEWAY_KEY, env=env, name="oidc"
    )
    made = httpx.post(f"{live.url}/v1/organization/projects", json={"id": PROJECT, "name": "Tokens"}, headers=AUTH)
    assert made.status_code == 200, made.text
    yield live
    live.stop()


def _alert(page: Page) -> str:
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    return alert.inner_text()


def test_reader_token_signs_in_to_its_project_and_role(page: Page, oidc_server: LiveServer, signer: Signer) -> None:
    sign_in(page, oidc_server, key=signer.token(tid=TENANT, roles=[READER_ROLE]))
    expect(page.get_by_role("heading", name="Stored completions")).to_be_visible()
    expect(page.locator("#who")).to_have_text(f"Signed in as reader · project {PROJECT}")
    expect(page.get_by_text("No stored completions yet.")).to_be_visible()
    expect(page.get_by_role("button", name="Distill")).to_be_hidden()
    expect(page.get_by_role("button", name="Delete selected")).to_be_hidden()
    expect(page.get_by_role("link", name="Administration")).to_be_hidden()


def test_admin_token_administers_its_own_project(page: Page, oidc_server: LiveServer, signer: Signer) -> None:
    sign_in(page, oidc_server, key=signer.token(tid=TENANT, roles=[ADMIN_ROLE], sub="admin-1"))
    expect(page.locator("#who")).to_have_text(f"Signed in as admin · project {PROJECT}")
    page.get_by_role("link", name="Administration").click()
    project = page.get_by_label("Project", exact=True)
    expect(project).to_have_value(PROJECT)
    expect(project.locator("option")).to_have_count(1)
    expect(page.get_by_role("heading", name="Store by policy")).to_be_visible()
    audit = page.locator("section", has_text="Audit log").locator("tbody tr")
    expect(audit.filter(has_text="token:admin-1").first).to_be_visible()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: s.token(tid=TENANT, roles=[READER_ROLE], exp=int(time.time()) - 60), "it has expired (exp)"),
        (lambda s: s.token(tid=TENANT, roles=[READER_ROLE], aud="api://someone-else"), "wrong audience (aud)"),
        (lambda s: s.token(tid=TENANT, roles=[READER_ROLE])[:-8] + "AAAAAAAA", "bad signature"),
        (
            lambda s: s.token(tid="another-tenant", roles=[READER_ROLE]),
            "project 'another-tenant' of this credential does not exist",
        ),
    ],
    ids=["expired", "wrong-audience", "bad-signature", "unknown-project"],
)
def test_bad_token_shows_the_servers_message_not_a_stack_trace(
    page: Page, oidc_server: LiveServer, signer: Signer, make: Callable[[Signer], str], message: str
) -> None:
    sign_in(page, oidc_server, key=make(signer))
    text = _alert(page)
    assert text.startswith("401 invalid_request_error ") and text.endswith(" invalid_api_key"), text
    assert message in text
    assert "Traceback" not in page.content()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()


def test_token_without_a_reading_role_is_refused_at_sign_in(
    page: Page, oidc_server: LiveServer, signer: Signer
) -> None:
    sign_in(page, oidc_server, key=signer.token(tid=TENANT, roles=["Stillroom.Unknown"]))
    assert "403 " in _alert(page)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_token_that_expires_in_the_tab_sends_back_to_sign_in_saying_why(
    page: Page, oidc_server: LiveServer, signer: Signer
) -> None:
    token = signer.token(tid=TENANT, roles=[READER_ROLE], exp=int(time.time()) + 3)
    sign_in(page, oidc_server, key=token)
    expect(page.locator("#who")).to_have_text(f"Signed in as reader · project {PROJECT}")
    expired = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 30
    while httpx.get(f"{oidc_server.url}/v1/me", headers=expired).status_code != 401:
        assert time.monotonic() < deadline, "the token did not expire"
        time.sleep(0.25)
    page.reload()
    assert "it has expired (exp)" in _alert(page)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('stillroom.apiKey')") is None
