"""The Stored completions pane in a real browser: sign in, filter, open a detail, edit metadata, delete, page."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.conftest import GATEWAY_KEY
from tests.live import LiveServer
from tests.web.conftest import CONSOLE_CONFIG, sign_in, store_completions


def _rows(page: Page) -> Locator:
    return page.locator("table.completions tbody tr[data-id]")


def test_wrong_key_shows_the_servers_message_and_the_right_key_signs_in(page: Page, console_server: LiveServer) -> None:
    sign_in(page, console_server, key="sk-wrong-key-000")
    expect(page.get_by_role("alert")).to_contain_text("Incorrect API key provided")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill(GATEWAY_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Stored completions")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('stillroom.apiKey')") == GATEWAY_KEY
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('stillroom.apiKey')") is None


def test_inference_key_cannot_sign_in(page: Page, console_server: LiveServer) -> None:
    created = httpx.post(
        console_server.url + "/v1/organization/projects/default/api_keys",
        json={"role": "inference", "name": "console test"},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
    )
    assert created.status_code == 200, created.text
    sign_in(page, console_server, key=created.json()["value"])
    expect(page.get_by_role("alert")).to_contain_text("lacks the permission 'stored-completions/read'")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('stillroom.apiKey')") is None


def test_filters_by_metadata_pairs_and_by_chip(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    ids = store_completions(sdk, tag, [{"app": "herbal"}, {"app": "tea"}, {"app": "herbal", "run": "2"}])
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}")
    expect(_rows(page)).to_have_count(3)
    newest = _rows(page).first
    expect(newest).to_have_attribute("data-id", ids[2])  # newest first
    expect(newest.locator("td").nth(4)).to_contain_text(f"Name herb 2 for tea ({tag}).")
    expect(newest.locator(".chip")).to_have_count(3)

    page.get_by_role("button", name="Add pair").click()
    page.get_by_label("Metadata key").last.fill("app")
    page.get_by_label("Metadata value").last.fill("herbal")
    page.get_by_role("button", name="Apply filters").click()
    expect(_rows(page)).to_have_count(2)
    assert {_rows(page).nth(i).get_attribute("data-id") for i in range(2)} == {ids[0], ids[2]}

    page.locator(f'tr[data-id="{ids[2]}"] a.chip', has_text="run").click()
    expect(_rows(page)).to_have_count(1)
    assert "m.run=2" in page.url

    page.get_by_label("Model").fill("no-such-model")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No stored completions match these filters.")).to_be_visible()


def test_detail_shows_messages_and_answer_and_edits_metadata(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    [cid] = store_completions(sdk, tag, [{"app": "herbal", "drop": "me"}])
    stored = sdk.chat.completions.retrieve(cid)
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}")
    _rows(page).first.locator("a.open").click()
    expect(page.get_by_role("heading", name=cid)).to_be_visible()
    expect(page.locator(".messages li")).to_have_count(2)
    expect(page.locator(".messages li").nth(1)).to_contain_text(f"Name herb 0 for tea ({tag}).")
    expect(page.locator(".answer .text")).to_have_text(stored.choices[0].message.content or "")
    expect(page.locator("dl.summary")).to_contain_text("local")  # the provider

    editor = page.get_by_role("form", name="Edit metadata")
    editor.get_by_role("button", name="Add pair").click()
    editor.get_by_label("Key").last.fill("reviewed")
    editor.get_by_label("Value").last.fill("yes")
    editor.get_by_role("button", name="Save metadata").click()
    expect(editor.get_by_text("Metadata saved.")).to_be_visible()
    assert sdk.chat.completions.retrieve(cid).metadata == {"t": tag, "app": "herbal", "drop": "me", "reviewed": "yes"}

    editor.get_by_role("button", name="Remove drop").click()
    editor.get_by_role("button", name="Save metadata").click()
    expect(editor.get_by_text("Metadata saved.")).to_be_visible()
    assert sdk.chat.completions.retrieve(cid).metadata == {"t": tag, "app": "herbal", "reviewed": "yes"}


def test_metadata_the_server_refuses_shows_its_error(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    [cid] = store_completions(sdk, tag, [{}])
    sign_in(page, console_server, hash_=f"#/completions/{cid}")
    editor = page.get_by_role("form", name="Edit metadata")
    editor.get_by_role("button", name="Add pair").click()
    editor.get_by_label("Key").last.fill("note")
    # The editor caps values at 512 characters; lift the cap so the server's own check answers.
    lift = "(el) => { el.removeAttribute('maxlength'); el.value = 'v'.repeat(513); }"
    editor.get_by_label("Value").last.evaluate(lift)
    editor.get_by_role("button", name="Save metadata").click()
    expect(editor.get_by_role("alert")).to_contain_text("string too long")
    assert sdk.chat.completions.retrieve(cid).metadata == {"t": tag}


def test_unknown_completion_shows_the_404_message(page: Page, console_server: LiveServer) -> None:
    sign_in(page, console_server, hash_="#/completions/chatcmpl-nosuchthing")
    expect(page.get_by_role("alert")).to_contain_text("No chat completion found with id 'chatcmpl-nosuchthing'.")


def test_delete_from_detail_and_selected_from_the_list(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    ids = store_completions(sdk, tag, [{}, {}, {}])
    sign_in(page, console_server, hash_=f"#/completions/{ids[0]}?m.t={tag}")
    page.get_by_role("button", name="Delete this completion").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status").filter(has_text=f"Deleted {ids[0]}.")).to_be_visible()
    expect(_rows(page)).to_have_count(2)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(ids[0])

    page.get_by_label(f"Select {ids[1]}").check()
    expect(page.get_by_text("1 selected")).to_be_visible()
    page.get_by_role("button", name="Delete selected").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(_rows(page)).to_have_count(2)  # cancelled: nothing deleted
    page.get_by_label("Select every row on this page").check()
    expect(page.get_by_text("2 selected")).to_be_visible()
    page.get_by_role("button", name="Delete selected").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Deleted 2 stored completions.")).to_be_visible()
    expect(page.get_by_text("No stored completions match these filters.")).to_be_visible()
    assert sdk.chat.completions.list(metadata={"t": tag}).data == []


def test_pages_forward_and_back_with_the_keyboard(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    ids = store_completions(sdk, tag, [{}, {}, {}])
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}&limit=2&order=asc")
    expect(_rows(page)).to_have_count(2)
    assert [_rows(page).nth(i).get_attribute("data-id") for i in range(2)] == ids[:2]
    page.get_by_role("button", name="Next page").click()
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page).first).to_have_attribute("data-id", ids[2])
    expect(page.get_by_role("button", name="Next page")).to_have_count(0)
    page.get_by_role("button", name="Previous page").click()
    expect(_rows(page)).to_have_count(2)

    page.locator("a.open").first.focus()
    page.keyboard.press("j")
    expect(page.locator(f'tr[data-id="{ids[1]}"] a.open')).to_be_focused()
    page.keyboard.press("x")
    expect(page.get_by_label(f"Select {ids[1]}")).to_be_checked()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=ids[1])).to_be_visible()
    page.keyboard.press("Escape")
    expect(_rows(page)).to_have_count(2)
    page.keyboard.press("/")
    expect(page.get_by_label("Search messages and answers")).to_be_focused()


def test_narrow_screen_labels_each_cell(page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str) -> None:
    store_completions(sdk, tag, [{"app": "herbal"}])
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}")
    expect(_rows(page)).to_have_count(1)
    cell = _rows(page).first.locator('td[data-label="Model"]')
    label = cell.evaluate("(el) => getComputedStyle(el, '::before').content")
    assert label == '"Model: "'
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390


def test_laptop_mode_needs_no_sign_in(page: Page, tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.live import start_server

    tmp = tmp_path_factory.mktemp("laptop")
    server = start_server(tmp, f"sqlite:///{tmp / 'laptop.db'}", config=CONSOLE_CONFIG, name="laptop")
    try:
        page.goto(server.url + "/")
        expect(page.get_by_role("heading", name="Stored completions")).to_be_visible()
        expect(page.get_by_text("Laptop mode: no key needed")).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
        expect(page.get_by_text(re.compile("No stored completions yet"))).to_be_visible()
    finally:
        server.stop()


def test_a_reader_key_sees_no_action_buttons(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    [cid] = store_completions(sdk, tag, [{"app": "herbal"}])
    created = httpx.post(
        console_server.url + "/v1/organization/projects/default/api_keys",
        json={"role": "reader", "name": "console reader buttons"},
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
    )
    assert created.status_code == 200, created.text
    sign_in(page, console_server, key=created.json()["value"], hash_=f"#/completions?m.t={tag}")
    expect(_rows(page)).to_have_count(1)
    expect(page.locator("#who")).to_contain_text("Signed in as reader")
    toolbar = page.get_by_role("toolbar", name="Selection")
    expect(toolbar.get_by_role("button", name="Clear selection")).to_be_visible()
    for name in ("Distill", "Evaluate", "Delete selected"):
        expect(toolbar.get_by_role("button", name=name)).to_be_hidden()
    _rows(page).first.locator("a.open").click()
    expect(page.get_by_role("heading", name="Metadata")).to_be_visible()
    expect(page.locator("dl.metadata")).to_contain_text("herbal")
    expect(page.get_by_role("button", name="Save metadata")).to_have_count(0)
    expect(page.get_by_role("button", name="Add pair")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete this completion")).to_have_count(0)
    expect(page.get_by_role("link", name="Administration")).to_be_hidden()
    assert sdk.chat.completions.retrieve(cid).metadata == {"t": tag, "app": "herbal"}
