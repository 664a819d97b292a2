"""Distill and Evaluate take the pane's whole filter as their scope in a real browser: a full-text search and
a time range travel to the wizards (with nothing selected), the wizard counts the matches, the dataset's
review counts exactly those, and the eval run grades exactly those."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import GATEWAY_KEY, LOCAL_MODEL
from tests.live import LiveServer
from tests.web.conftest import sign_in
from tests.web.test_search import LOCAL_TIME, _next_second

RUN = 240_000  # ms: grading stored answers samples nothing


def _ask(client: openai.OpenAI, tag: str, herb: str, n: int) -> str:
    answer = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": f"Question {n}: is {herb} tea good? ({tag})"}],
        max_tokens=1,
        store=True,
        metadata={"t": tag},
    )
    return answer.id


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Stored:
    early: list[str]  # three peppermint questions
    boundary: int  # the second from which the rest were stored
    chamomile: list[str]  # ten chamomile questions
    late: str  # one more peppermint question


@pytest.fixture(scope="module")
def stored(console_server: LiveServer, tag: str) -> Iterator[Stored]:
    with openai.OpenAI(base_url=console_server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        early = [_ask(sdk, tag, "peppermint", n) for n in range(3)]
        boundary = _next_second()
        chamomile = [_ask(sdk, tag, "chamomile", n) for n in range(10)]
        yield Stored(early, boundary, chamomile, _ask(sdk, tag, "peppermint", 3))


def _distill_count(page: Page, matched: int) -> None:
    page.get_by_role("button", name="Distill").click()
    expect(page.get_by_role("heading", name="Distill")).to_be_visible()
    selection = page.locator("p.selection")
    expect(selection).to_have_attribute("data-matched", str(matched))
    expect(selection).to_contain_text(f"{matched} completions match now.")
    page.get_by_label("Drop truncated answers").uncheck()  # one-token answers end on the length limit
    page.get_by_role("button", name="Build dataset").click()
    review = page.locator("form.review")
    expect(review.locator('[data-count="selected"]')).to_have_text(str(matched))
    expect(review.locator('[data-count="training"]')).to_have_text(str(matched))


def _evaluate_count(page: Page, matched: int, first: str | None = None) -> None:
    page.get_by_role("button", name="Evaluate").click()
    expect(page.get_by_role("heading", name="Evaluate")).to_be_visible()
    expect(page.locator("p.selection")).to_have_attribute("data-matched", str(matched))
    if first is not None:  # the sample a grader is tried on is the oldest match of the same filter
        similarity = page.locator('fieldset.grader[data-type="text_similarity"]')
        similarity.get_by_role("button", name="Try on one sample").click()
        expect(similarity.locator(".try-result")).to_contain_text(f"on the stored answer of {first}")
    page.get_by_role("button", name="Start evaluation").click()
    expect(page).to_have_url(re.compile(r"#/evals/eval_\w+/runs/evalrun_\w+"))
    expect(page.locator('ul.runs li[data-status="completed"]')).to_have_count(1, timeout=RUN)
    expect(page.locator("p.shown")).to_have_text(f"{matched} of {matched} items shown.")


def test_a_search_is_the_scope_of_distill_and_evaluate(
    page: Page, console_server: LiveServer, tag: str, stored: Stored
) -> None:
    pane = f"#/completions?q=chamomile+{tag}&limit=5"
    sign_in(page, console_server, hash_=pane)
    expect(page.locator("table.completions tbody tr[data-id]")).to_have_count(5)  # one page of the ten
    expect(page.get_by_text("None selected: Distill and Evaluate take every match")).to_be_visible()
    _distill_count(page, 10)
    assert f"q=chamomile+{tag}" in page.url and "ids=" not in page.url
    expect(page.locator("p.selection")).to_contain_text(f"search chamomile {tag}")

    page.goto(console_server.url + "/" + pane)
    _evaluate_count(page, 10, first=stored.chamomile[0])


def test_a_time_range_is_the_scope_of_distill_and_evaluate(
    page: Page, console_server: LiveServer, tag: str, stored: Stored
) -> None:
    sign_in(page, console_server, hash_=f"#/completions?m.t={tag}&limit=5")
    page.get_by_label("From", exact=True).fill(page.evaluate(LOCAL_TIME, stored.boundary))
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"from=\d{4}-"))
    pane = page.url
    _distill_count(page, 11)  # the ten chamomile questions and the late peppermint one, not the early three
    expect(page.locator("p.selection")).to_contain_text("created from ")

    page.goto(pane)
    _evaluate_count(page, 11)


def test_select_all_matching_hands_the_filter_not_the_page_to_distill(
    page: Page, console_server: LiveServer, tag: str, stored: Stored
) -> None:
    sign_in(page, console_server, hash_=f"#/completions?q=chamomile+{tag}&limit=5")
    expect(page.locator("table.completions tbody tr[data-id]")).to_have_count(5)
    page.get_by_label("Select every row on this page").check()
    page.get_by_role("button", name="Select all matching").click()
    expect(page.get_by_text("All 10 matching selected")).to_be_visible()
    _distill_count(page, 10)
    assert "ids=" not in page.url
