"""Browser fixtures: Debian's chromium driven by Playwright against a real `stillroom serve`.

Never a downloaded browser: chromium comes from `apt-get install chromium` (.ci/run does it). The tests skip,
saying why, only when /usr/bin/chromium is missing. They run on SQLite only: the console is a client of the
JSON API, whose every route the API tests already run on both databases.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.conftest import GATEWAY_KEY, LOCAL_MODEL
from tests.live import LiveServer, start_server

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
