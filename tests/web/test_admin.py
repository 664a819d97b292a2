"""Administration in a real browser: usage, the storage switch, keys shown once and revoked, the audit log;
a key that may not administer never sees the page's link."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import GATEWAY_KEY
from tests.live import LiveServer
from tests.web.conftest import sign_in

AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}


def test_server_key_creates_and_revokes_a_key_and_flips_storage(page: Page, console_server: LiveServer) -> None:
    base = console_server.url + "/v1/organization/projects/default"
    sign_in(page, console_server)
    page.get_by_role("link", name="Administration").click()
    expect(page.get_by_role("heading", name="Administration")).to_be_visible()
    expect(page.get_by_label("Project", exact=True)).to_have_value("default")
    expect(page.get_by_label("Usage")).to_be_visible()

    page.get_by_label("Name", exact=True).fill("from the console")
    page.get_by_label("Role").select_option("reader")
    page.get_by_role("button", name="Create key").click()
    value = page.get_by_label("The new key").input_value()
    as_new_key = {"Authorization": f"Bearer {value}"}
    assert httpx.get(console_server.url + "/v1/chat/completions", headers=as_new_key).is_success
    row = page.locator("tr", has_text="from the console")
    expect(row).to_contain_text("reader")

    row.get_by_role("button", name="Revoke from the console").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(page.locator("tr", has_text="from the console")).to_have_count(0)
    refused = httpx.get(console_server.url + "/v1/chat/completions", headers=as_new_key)
    assert refused.status_code == 401

    switch = page.get_by_label("Store completions in this project")
    expect(switch).to_be_checked()
    switch.uncheck()
    expect(page.get_by_text("Storage disabled for default.")).to_be_visible()
    assert httpx.get(base, headers=AUTH).json()["storage_enabled"] is False
    switch.check()
    expect(page.get_by_text("Storage enabled for default.")).to_be_visible()
    assert httpx.get(base, headers=AUTH).json()["storage_enabled"] is True
    expect(page.locator("section", has_text="Audit log").locator("tbody tr").first).to_be_visible()


def test_reader_key_sees_no_administration(page: Page, console_server: LiveServer) -> None:
    created = httpx.post(
        console_server.url + "/v1/organization/projects/default/api_keys",
        json={"role": "reader", "name": "console reader"},
        headers=AUTH,
    )
    assert created.status_code == 200, created.text
    sign_in(page, console_server, key=created.json()["value"])
    expect(page.get_by_role("heading", name="Stored completions")).to_be_visible()
    expect(page.get_by_role("link", name="Administration")).to_be_hidden()


def test_project_admin_key_administers_its_own_project_only(page: Page, console_server: LiveServer) -> None:
    created = httpx.post(
        console_server.url + "/v1/organization/projects/default/api_keys",
        json={"role": "admin", "name": "console project admin"},
        headers=AUTH,
    )
    assert created.status_code == 200, created.text
    sign_in(page, console_server, key=created.json()["value"])
    expect(page.locator("#who")).to_contain_text("Signed in as admin · project default")
    page.get_by_role("link", name="Administration").click()
    expect(page.get_by_role("heading", name="Administration")).to_be_visible()
    project = page.get_by_label("Project", exact=True)
    expect(project).to_have_value("default")
    expect(project.locator("option")).to_have_count(1)
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    expect(page.locator("tr", has_text="console project admin")).to_contain_text("admin")
