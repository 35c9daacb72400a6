"""End to end in a real browser: `python app.py`, headless Chromium, paste, click, read.

Chromium is Debian's package (`apt-get install chromium`, which .ci/run does), driven by
Playwright through ``executable_path``: Playwright's own browser downloads need a network.

    KOBART_UPDATE_SCREENSHOT=1 pytest tests/test_app_browser.py

serves the quickstart model (runs/tiny/final_model) instead of a random one and saves the
page to docs/demo.png for the README.
"""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from test_app import MAX_SOURCE_LENGTH, SAMPLE, free_port, save_tiny_model
from timeouts import scaled_timeout

from kobart_flax.data_io import read_examples
from kobart_flax.demo import QUICKSTART_MODEL

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No network here: nothing that phones home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UPDATE_SCREENSHOT = os.environ.get("KOBART_UPDATE_SCREENSHOT") == "1"
SCREENSHOT = ROOT / "docs" / "demo.png"
SERVER_START_SECONDS = 180  # imports, model load and the warm-up compile on a 2-core CPU

# app.py in a subprocess, driven by Chromium.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python app.py` on a free port; its URL once the page answers."""
    if UPDATE_SCREENSHOT:
        if not (ROOT / QUICKSTART_MODEL).is_dir():
            pytest.fail(f"no {QUICKSTART_MODEL}: run python train_flax.py --config configs/tiny.py")
        options = []  # the command the README shows
    else:
        model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny_model"))
        options = ["--model", str(model_dir), "--max-source-length", str(MAX_SOURCE_LENGTH)]
    port = free_port()
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), *options],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, server, log_path)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_serving(url: str, server: subprocess.Popen, log_path: Path) -> None:
    budget = scaled_timeout(SERVER_START_SECONDS)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"app.py exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"app.py did not serve {url} in {budget:.0f} s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium package "
            "(apt-get install --no-install-recommends chromium), as .ci/run does"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_paste_an_article_click_summarize_read_the_summary(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url)
    # A held-out article of the generated sample: the kind the quickstart model learned.
    article = read_examples(str(SAMPLE / "test.tsv"))[0].news
    page.locator("#article textarea").fill(article)
    page.locator("#summarize").click()

    summary = page.locator("#summary textarea")
    expect(summary).not_to_have_value("", timeout=scaled_timeout(60) * 1000)
    assert summary.input_value().strip()
    expect(page.locator("#article-note")).to_contain_text("Generated in")
    assert "tokens" in page.locator("#article-note").inner_text()
    if UPDATE_SCREENSHOT:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
