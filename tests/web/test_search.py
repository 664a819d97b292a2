"""The Stored completions pane's server-side filters in a real browser: full-text search, the time range,
and select-all-matching with delete by filter (its dry-run count shown before it runs)."""

from __future__ import annotations

import time

import openai
from playwright.sync_api import Locator, Page, expect

from tests.conftest import LOCAL_MODEL
from tests.live import LiveServer
from tests.web.conftest import sign_in

LOCAL_TIME = """(s) => {
  const d = new Date(s * 1000);
  const p = (n) => String(n).padStart(2, "0");
  const date = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  return `${date}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}"""


def _rows(page: Page) -> Locator:
    return page.locator("table.completions tbody tr[data-id]")


def _ask(client: openai.OpenAI, tag: str, question: str, **metadata: str) -> str:
    answer = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": f"{question} ({tag})"}],
        max_tokens=1,
        store=True,
        metadata={"t": tag, **metadata},
    )
    return answer.id


def _next_second() -> int:
    """Wait for the clock to pass a whole second; that second."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)
    return start + 1


def test_search_box_finds_words_in_messages_on_the_server(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    ids = [_ask(sdk, tag, f"Tell me about {herb} tea") for herb in ("chamomile", "peppermint", "rooibos")]
    sign_in(page, console_server, hash_="#/completions?limit=1")
    search = page.get_by_label("Search messages and answers")
    search.fill(f"peppermint {tag}")
    search.press("Enter")
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page).first).to_have_attribute("data-id", ids[1])
    assert "q=peppermint" in page.url
    expect(page.get_by_role("button", name="Next page")).to_have_count(0)

    search.fill(tag)  # every one of them, one per page, newest first, found across pages
    search.press("Enter")
    # Once this search has answered (until then the peppermint row of the last one is still shown).
    expect(page.get_by_role("button", name="Next page")).to_have_count(1)
    seen = []
    for _ in ids:
        expect(_rows(page)).to_have_count(1)
        seen.append(_rows(page).first.get_attribute("data-id"))
        if len(seen) < len(ids):
            page.get_by_role("button", name="Next page").click()
            expect(_rows(page).first).not_to_have_attribute("data-id", seen[-1])
    assert seen == ids[::-1]

    search.fill(f"lapsang {tag}")
    search.press("Enter")
    expect(page.get_by_text("No stored completions match these filters.")).to_be_visible()


def test_time_range_is_answered_by_the_server_across_pages(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    early = _ask(sdk, tag, "Early question")
    boundary = _next_second()
    later = [_ask(sdk, tag, "Later question") for _ in range(2)]
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}&limit=1")
    expect(_rows(page).first).to_have_attribute("data-id", later[1])
    to = page.evaluate(LOCAL_TIME, boundary - 1)  # "To" includes its own second
    page.get_by_label("To", exact=True).fill(to)
    page.get_by_role("button", name="Apply filters").click()
    # The newest page holds the early one: the server filtered, not the page already loaded.
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page).first).to_have_attribute("data-id", early)
    expect(page.get_by_role("button", name="Next page")).to_have_count(0)

    page.get_by_label("To", exact=True).fill("")
    page.get_by_label("From", exact=True).fill(page.evaluate(LOCAL_TIME, boundary))
    page.get_by_role("button", name="Apply filters").click()
    expect(_rows(page).first).to_have_attribute("data-id", later[1])
    page.get_by_role("button", name="Next page").click()
    expect(_rows(page).first).to_have_attribute("data-id", later[0])
    expect(page.get_by_role("button", name="Next page")).to_have_count(0)


def test_select_all_matching_deletes_by_filter_after_showing_the_dry_run_count(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    doomed = [_ask(sdk, tag, f"Question {n} about oolong", batch="a") for n in range(4)]
    spared = [_ask(sdk, tag, "Question about oolong", batch="b"), _ask(sdk, tag, "Question about sencha", batch="a")]
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}&m.batch=a&q=oolong&limit=2")
    expect(_rows(page)).to_have_count(2)
    page.get_by_label("Select every row on this page").check()
    page.get_by_role("button", name="Select all matching").click()
    expect(page.get_by_text("All 4 matching selected")).to_be_visible()
    page.get_by_role("button", name="Delete all 4 matching").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete 4 stored completions?")
    dialog.get_by_role("button", name="Delete 4").click()
    expect(page.get_by_role("status")).to_contain_text("Deleted 4 stored completions matching the filters.")
    expect(page.get_by_text("No stored completions match these filters.")).to_be_visible()
    left = [c.id for c in sdk.chat.completions.list(metadata={"t": tag})]
    assert left == spared
    for cid in doomed:
        assert cid not in left


def test_cancelling_delete_by_filter_keeps_everything(
    page: Page, console_server: LiveServer, sdk: openai.OpenAI, tag: str
) -> None:
    ids = [_ask(sdk, tag, "Question about matcha") for _ in range(3)]
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}&limit=2")
    page.get_by_label("Select every row on this page").check()
    page.get_by_role("button", name="Select all matching").click()
    page.get_by_role("button", name="Delete all 3 matching").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert [c.id for c in sdk.chat.completions.list(metadata={"t": tag})] == ids
    page.get_by_role("button", name="Clear selection").click()
    expect(page.get_by_text("None selected")).to_be_visible()
