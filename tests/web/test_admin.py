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


def test_store_policy_is_edited_in_administration_and_a_refused_value_shows_the_servers_message(
    page: Page, console_server: LiveServer
) -> None:
    base = console_server.url + "/v1/organization/projects/default"
    before = httpx.get(base, headers=AUTH).json()["store_policy"]
    sign_in(page, console_server, hash_="#/admin")
    policy = page.locator("form.policy")
    expect(policy.get_by_role("heading", name="Store by policy")).to_be_visible()
    mode = policy.get_by_label("Store", exact=True)
    expect(mode).to_have_value(before["mode"])
    try:
        mode.select_option("sample")
        policy.get_by_label("Sample rate").fill("1.5")
        policy.get_by_role("button", name="Save store policy").click()
        expect(policy.get_by_role("alert")).to_have_text(
            "400 invalid_request_error Invalid 'store_policy.sample_rate': expected 0 to 1."
        )
        assert httpx.get(base, headers=AUTH).json()["store_policy"] == before

        policy.get_by_label("Sample rate").fill("0.25")
        policy.get_by_role("button", name="Add pair").click()
        policy.get_by_label("Metadata key").fill("app")
        policy.get_by_label("Metadata value").fill("console")
        policy.get_by_role("button", name="Save store policy").click()
        expect(page.get_by_role("status")).to_have_text("Store policy saved for default.")
        expect(policy.get_by_role("alert")).to_have_count(0)
        expect(page.locator("#policy-summary")).to_have_text("sample (0.25), default metadata app=console")
        saved = httpx.get(base, headers=AUTH).json()["store_policy"]
        assert saved == {"mode": "sample", "sample_rate": 0.25, "metadata": {"app": "console"}}

        page.reload()  # what the page shows comes from the server
        expect(mode).to_have_value("sample")
        expect(policy.get_by_label("Sample rate")).to_have_value("0.25")
        expect(policy.get_by_label("Metadata value")).to_have_value("console")
        mode.select_option("request")
        expect(policy.get_by_label("Sample rate")).to_be_hidden()
        policy.get_by_role("button", name="Remove this pair").click()
        policy.get_by_role("button", name="Save store policy").click()
        expect(page.locator("#policy-summary")).to_have_text("request")
        assert httpx.get(base, headers=AUTH).json()["store_policy"]["mode"] == "request"
    finally:  # the server is shared by the module's tests: leave the policy as it was
        httpx.post(base, json={"store_policy": before}, headers=AUTH).raise_for_status()
