"""Browser fixtures: Debian's chromium driven by Playwright against a real `stillroom serve`.

Never a downloaded browser: chromium comes from `apt-get install chromium` (.ci/run does it). The tests skip,
saying why, only when /usr/bin/chromium is missing. They run on SQLite only: the console is a client of the
JSON API, whose every route the API tests already run on both databases.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.conftest import GATEWAY_KEY, LOCAL_MODEL
from tests.live import LiveServer, start_server
from tests.training.conftest import smollm2_gguf, tiny_gguf  # the tiny trainable llama, built once per session

__all__ = ["smollm2_gguf", "tiny_gguf"]  # fixtures used here

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "web"
CONSOLE_CONFIG = f'[[models]]\nname = "{LOCAL_MODEL}"\nprovider = "local"\n'

NO_CHROMIUM = "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium; .ci/run does it)"


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A gateway with a server key (so the console asks to sign in), serving the bundled model."""
    tmp = tmp_path_factory.mktemp("console")
    database = f"sqlite:///{tmp / 'console.db'}"
    live = start_server(tmp, database, config=CONSOLE_CONFIG, api_key=GATEWAY_KEY, name="console")
    yield live
    live.stop()


@pytest.fixture
def sdk(console_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=console_server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:12]


def _screenshot_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name) + ".png"


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); a screenshot of how it ended is saved under test-output/web/."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / _screenshot_name(request)), full_page=True)
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def store_completions(client: openai.OpenAI, tag: str, metadata: list[dict[str, str]]) -> list[str]:
    """One short stored completion per metadata dict (each also tagged `t=<tag>`), oldest first."""
    ids = []
    for n, pairs in enumerate(metadata):
        answer = client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": f"Name herb {n} for tea ({tag})."},
            ],
            max_tokens=2,
            store=True,
            metadata={"t": tag, **pairs},
        )
        ids.append(answer.id)
    return ids


def sign_in(page: Page, server: LiveServer, key: str = GATEWAY_KEY, hash_: str = "") -> None:
    page.goto(server.url + "/" + hash_)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


# --- Distill and Evaluate: a gateway on the tiny trainable model of tests/training, with its worker ---------

TINY = "tiny-llama"


@pytest.fixture(scope="session")
def studio_server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[LiveServer]:
    """A gateway (server key) whose one model is the tiny llama: stored answers, training and eval runs take
    seconds on two cores. Its worker trains and grades for real."""
    tmp = tmp_path_factory.mktemp("studio")
    config = f'[[models]]\nname = "{TINY}"\nprovider = "local"\npath = "{tiny_gguf}"\nn_ctx = 512\n'
    env = {"STILLROOM_FILES_DIR": str(tmp / "files")}
    live = start_server(
        tmp, f"sqlite:///{tmp / 'studio.db'}", config=config, api_key=GATEWAY_KEY, env=env, name="studio"
    )
    yield live
    live.stop()


@pytest.fixture
def studio_sdk(studio_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=studio_server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as client:
        yield client


def store_tiny(client: openai.OpenAI, tag: str, n: int, repeat_first: bool = False) -> list[str]:
    """`n` stored answers of the tiny model (greedy, so a repeated prompt repeats its answer), tagged t=<tag>."""
    prompts = [f"Which colour is item {i}? ({tag})" for i in range(n)]
    if repeat_first:
        prompts.append(prompts[0])
    ids = []
    for prompt in prompts:
        answer = client.chat.completions.create(
            model=TINY,
            messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}],
            max_tokens=6,
            temperature=0,
            store=True,
            metadata={"t": tag},
        )
        ids.append(answer.id)
    return ids


def wait_for(predicate: Callable[[], Any], timeout: float = 300, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not met in {timeout} s")


@pytest.fixture(scope="session")
def student(studio_server: LiveServer) -> str:
    """A fine-tuned model on the studio server: the one test_distill trained in the browser when it ran
    first, otherwise one trained here through the API (a few steps)."""
    with openai.OpenAI(base_url=studio_server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as client:
        done = [
            j for j in client.fine_tuning.jobs.list(limit=100).data if j.status == "succeeded" and j.fine_tuned_model
        ]
        if done:
            return str(done[0].fine_tuned_model)
        tag = uuid.uuid4().hex[:12]
        store_tiny(client, tag, 10)
        dataset = client.post(
            "/fine_tuning/datasets", body={"metadata": {"t": tag}, "drop_truncated": False}, cast_to=httpx.Response
        ).json()
        job = client.fine_tuning.jobs.create(
            model=TINY,
            training_file=dataset["training_file"]["id"],
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
        )
        finished = wait_for(
            lambda: (
                (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j
            ),
            what="the student's training",
        )
        assert finished.status == "succeeded", (finished.error, studio_server.log()[-3000:])
        return str(finished.fine_tuned_model)
