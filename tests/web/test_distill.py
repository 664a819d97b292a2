"""Distill in a real browser: select stored completions, choose the base model and dataset options, review the
dataset (counts, what was dropped and why, a sample, a download), train a student on the tiny model, watch its
job page to the end (loss curve, checkpoints, events) and chat with it next to its base in the playground."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import openai
from playwright.sync_api import Page, expect

from tests.live import LiveServer
from tests.web.conftest import TINY, sign_in, store_tiny

TRAINING = 300_000  # ms: the worker imports torch, trains three steps and writes the student's GGUF


def test_distill_wizard_trains_a_student_that_answers_in_the_playground(
    page: Page, studio_server: LiveServer, studio_sdk: openai.OpenAI, tag: str
) -> None:
    ids = store_tiny(studio_sdk, tag, 11, repeat_first=True)  # the repeated prompt is a duplicate example
    sign_in(page, studio_server, hash_=f"#/completions?m.t={tag}")
    expect(page.locator("table.completions tbody tr[data-id]")).to_have_count(12)
    page.get_by_label("Select every row on this page").check()
    expect(page.get_by_text("12 selected")).to_be_visible()
    page.get_by_role("button", name="Distill").click()

    expect(page.get_by_role("heading", name="Distill")).to_be_visible()
    expect(page.locator("p.selection")).to_contain_text("12 selected completions")
    assert set(page.url.split("ids=")[1].split("&")[0].split("%2C")) == set(ids)
    expect(page.get_by_label("Base model")).to_have_value(TINY)
    page.get_by_label("Drop truncated answers").uncheck()  # six-token answers mostly end on the length limit
    page.get_by_label("System prompt", exact=True).select_option("strip")
    page.get_by_role("button", name="Build dataset").click()

    review = page.locator("form.review")
    expect(review.locator('[data-count="selected"]')).to_have_text("12")
    expect(review.locator('[data-reason="duplicate"]')).to_have_text("1 duplicates")
    training = int(review.locator('[data-count="training"]').inner_text())
    assert 10 <= training <= 11
    expect(review.locator('[data-count="validation"]')).to_have_text("0")
    expect(review.locator("ol.sample > li")).to_have_count(3)
    expect(review.locator('.turns li[data-role="system"]')).to_have_count(0)  # stripped
    expect(review.locator('.turns li[data-role="user"]').first).to_contain_text(f"({tag})")
    with page.expect_download() as download:
        review.get_by_role("button", name="Download training JSONL").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == training and all(json.loads(line)["messages"][0]["role"] == "user" for line in lines)

    review.get_by_label("Suffix").fill("console")
    review.get_by_label("Epochs").fill("1")
    review.get_by_label("Batch size").fill("4")
    review.get_by_role("button", name="Start fine-tuning").click()
    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=TRAINING)
    steps = -(-training // 4)
    expect(page.locator("svg.line-chart circle.point.s0")).to_have_count(steps)
    expect(page.locator("figure.chart-box figcaption")).to_contain_text(f"Step {steps} of {steps}")
    expect(page.locator("table.checkpoints tbody tr").first).to_contain_text(f"{TINY}:default:console:{job_id}")
    with page.expect_download() as adapter:  # the checkpoint's adapter, a zipped PEFT folder
        page.locator("table.checkpoints tbody tr").first.get_by_role("button", name="Download adapter").click()
    with zipfile.ZipFile(adapter.value.path()) as zipped:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zipped.namelist())
    expect(page.locator("ol.events")).to_contain_text("The job has successfully completed")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)

    student = f"ft:{TINY}:default:console:{job_id}"
    playground = page.locator("form.playground")
    expect(playground.get_by_role("region", name="Student")).to_contain_text(student)
    expect(playground.get_by_role("region", name="Base model")).to_contain_text(TINY)
    playground.get_by_label("Prompt", exact=True).fill(f"Which colour is item 3? ({tag})")
    playground.get_by_label("Max tokens").fill("4")
    playground.get_by_role("button", name="Send to both").click()
    for column in ("Student", "Base model"):
        expect(playground.get_by_role("region", name=column)).to_contain_text(re.compile(r"\d+ tokens in [\d,.]+ ms"))
    assert studio_sdk.fine_tuning.jobs.retrieve(job_id).fine_tuned_model == student
