"""Evaluate in a real browser: graders tried on one sample, the stored answers compared with the tiny base
model and a fine-tuned student, the run page's progress, its pass-rate chart with intervals, the per-item
table with each grader's verdict and the filter to items where the subjects disagree; a run's report_url
opens the same page."""

from __future__ import annotations

import re

import httpx
import openai
from playwright.sync_api import Page, expect

from tests.conftest import GATEWAY_KEY
from tests.live import LiveServer
from tests.web.conftest import TINY, sign_in, store_tiny

# A grader built to make the subjects disagree: every answer passes, except the student's to item 3.
FAILS_THE_STUDENT_ON_ITEM_3 = (
    "def grade(sample, item) -> float:\n"
    '    return 0.0 if sample.get("model", "").startswith("ft:") and "item 3?" in item["user_text"] else 1.0\n'
)
RUNS = 300_000  # ms: three runs of six items, two of them sampling a model on the worker


def test_evaluate_wizard_compares_stored_answers_base_and_student(
    page: Page, studio_server: LiveServer, studio_sdk: openai.OpenAI, student: str, tag: str
) -> None:
    store_tiny(studio_sdk, tag, 6)
    sign_in(page, studio_server, hash_=f"#/completions?m.t={tag}")
    expect(page.locator("table.completions tbody tr[data-id]")).to_have_count(6)
    page.get_by_role("button", name="Evaluate").click()  # nothing selected: every completion the filter matches

    expect(page.get_by_role("heading", name="Evaluate")).to_be_visible()
    expect(page.locator("p.selection")).to_contain_text(f"t={tag}")
    similarity = page.locator('fieldset.grader[data-type="text_similarity"]')
    similarity.get_by_role("button", name="Try on one sample").click()
    expect(similarity.locator(".try-result")).to_contain_text("Reward 1 on the stored answer of chatcmpl-")

    page.get_by_label("Grader type").select_option("python")
    page.get_by_role("button", name="Add grader").click()
    python = page.locator('fieldset.grader[data-type="python"]')
    python.get_by_label("Source").fill(FAILS_THE_STUDENT_ON_ITEM_3)
    python.get_by_role("button", name="Try on one sample").click()
    expect(python.locator(".try-result")).to_contain_text("Reward 1 on the stored answer of chatcmpl-")

    subjects = page.get_by_role("group", name="Subjects")
    expect(subjects.get_by_label("The stored answers")).to_be_checked()
    subjects.get_by_label(TINY, exact=True).check()
    subjects.get_by_label(re.compile(re.escape(student))).check()
    page.get_by_label("Max tokens per answer").fill("6")
    page.get_by_role("button", name="Start evaluation").click()

    expect(page).to_have_url(re.compile(r"#/evals/eval_\w+/runs/evalrun_\w+"))
    expect(page.locator('ul.runs li[data-status="completed"]')).to_have_count(3, timeout=RUNS)
    chart = page.locator("svg.bar-chart")
    expect(chart.locator("g.bar-group")).to_have_count(9)  # (all criteria + two graders) x three subjects
    stored_all = chart.locator('g.bar-group[data-subject="stored answers"][data-criterion="all criteria"] title')
    expect(stored_all).to_contain_text(re.compile(r"stored answers · all criteria: \d+% \(95% CI \d+%\u2013\d+%\)"))
    stored_similarity = chart.locator('g.bar-group[data-subject="stored answers"][data-criterion="text_similarity-1"]')
    expect(stored_similarity.locator("title")).to_contain_text(": 100% (95% CI")  # its own answers, word for word
    expect(page.locator("table.pass-rates tbody tr")).to_have_count(9)
    rates = page.locator("table.pass-rates")
    expect(rates.locator('tr[data-criterion="text_similarity-1"][data-subject="stored answers"]')).to_contain_text(
        "6/6"
    )
    expect(rates.locator(f'tr[data-criterion="python-2"][data-subject="{student}"]')).to_contain_text("5/6")
    expect(rates.locator('tr[data-criterion="python-2"][data-subject="tiny-llama"]')).to_contain_text("6/6")

    items = page.locator("table.items tbody tr[data-item]")
    expect(items).to_have_count(6)
    expect(items.first.locator("td.subject")).to_have_count(3)
    expect(items.first.locator("td.subject").first.locator(".verdicts li")).to_have_count(2)
    expect(items.nth(3).locator("td.subject").nth(2).locator(".verdict")).to_have_text("fail")
    page.get_by_label("Only items where the subjects disagree").check()
    shown = page.locator("p.shown")
    expect(shown).to_have_text(re.compile(r"^[1-6] of 6 items shown\.$"))
    expect(page.locator('table.items tbody tr[data-disagree="false"]')).to_have_count(0)
    expect(page.locator('table.items tbody tr[data-item="3"]')).to_have_count(1)
    page.get_by_label("Only items where the subjects disagree").uncheck()
    expect(shown).to_have_text("6 of 6 items shown.")

    eval_id, run_id = re.findall(r"#/evals/([^/]+)/runs/([^/?]+)", page.url)[0]
    run = httpx.get(
        f"{studio_server.url}/v1/evals/{eval_id}/runs/{run_id}", headers={"Authorization": f"Bearer {GATEWAY_KEY}"}
    ).json()
    page.goto(run["report_url"])
    expect(page.locator(f'ul.runs li.current[data-run="{run_id}"]')).to_contain_text("stored answers")
    expect(page.locator("svg.bar-chart g.bar-group")).to_have_count(9)
