"""The web page at `/` in Debian's Chromium, driven by Playwright: key, prompt, progress, a playing video, remix.

Runs `kinema serve api` and `kinema serve worker` as separate processes (the multi-host layout) on
127.0.0.1. Chromium starts with the network features that would reach outside turned off. The
screenshot goes to $KINEMA_TEST_ARTIFACTS (if set) or the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_serve_support import Server, add_key, need, wait_for

CHROMIUM = os.environ.get("KINEMA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                 "--disable-dev-shm-usage"]


def wait_js(page, predicate: str, timeout: float, what: str):
    """Poll a JS predicate from Python: Playwright's wait_for_function evaluates strings, which the page's CSP forbids."""
    return wait_for(lambda: page.evaluate(predicate), timeout, what, interval=0.1)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    need(sync_playwright is not None, "the playwright Python package")
    need(Path(CHROMIUM).is_file(), f"Chromium at {CHROMIUM} (Debian package chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        browser.close()


def test_page_generates_plays_and_remixes_a_video(browser, tiny_model_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    key = add_key(db, "browser", rate=1000, queue=1000)
    server = Server(tmp_path, tiny_model_dir, db, role=["api"], extra=["--sizes", "64x64,80x48", "--seconds", "1,2"])
    server.start_worker(0)
    page = None
    try:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server.base + "/", wait_until="domcontentloaded")

        page.fill("#api-key", key)  # the server asks for keys: the page shows its key box
        page.click("#key-form button")
        wait_js(page, "() => document.querySelectorAll('#size option').length === 3", 30, "the sizes from /v1/models")
        assert page.eval_on_selector_all("#size option", "els => els.map(e => e.value)") == ["", "64x64", "80x48"]
        assert page.eval_on_selector_all("#seconds option", "els => els.map(e => e.value)") == ["1", "2"]

        page.fill("#prompt", "a red ball bounces on the floor")
        page.select_option("#size", "80x48")
        page.fill("#steps", "3")
        page.fill("#seed", "11")
        page.click("#submit")
        page.wait_for_selector(".card progress", timeout=10_000)  # the job shows up with its progress bar
        wait_js(page, """() => { const v = document.querySelector('.card[data-status="completed"] video');
                                 return Boolean(v && v.readyState >= 2 && v.duration > 0); }""", 90, "a playable video")
        state = page.evaluate(
            """async () => { const v = document.querySelector('.card[data-status="completed"] video');
                             await v.play(); await new Promise(r => setTimeout(r, 400));
                             return {ready: v.readyState, duration: v.duration, time: v.currentTime,
                                     paused: v.paused, width: v.videoWidth, height: v.videoHeight}; }""")
        assert state["ready"] >= 2 and state["duration"] > 0 and state["time"] > 0 and not state["paused"], state
        assert (state["width"], state["height"]) == (80, 48)
        meta = page.text_content(".card .meta")
        assert "80x48" in meta and "seed 11" in meta and "3 steps" in meta

        page.fill("#prompt", "a blue ball bounces on the floor")
        page.click('.card[data-status="completed"] button.remix')
        wait_js(page, """() => document.querySelectorAll('.card[data-status="completed"] video').length === 2""", 90,
                "the remix to play")
        assert "remix" in page.text_content(".card .meta")  # the newest card, first in the gallery

        image = tmp_path / "wide.png"  # image-to-video at size "auto": the offered size nearest the image's shape
        Image.new("RGB", (200, 120), (200, 40, 40)).save(image)
        page.select_option("#size", "")
        page.set_input_files("#image", str(image))
        page.click("#submit")
        wait_js(page, """() => document.querySelectorAll('.card[data-status="completed"] video').length === 3""", 90,
                "the image-to-video clip")
        assert "80x48" in page.text_content(".card .meta")

        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("KINEMA_TEST_ARTIFACTS"):
            out = Path(os.environ["KINEMA_TEST_ARTIFACTS"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / shot.name)
        assert not problems, problems  # no script errors, no blocked resources (the page has a strict CSP)
    except BaseException:
        print(server.logs())
        raise
    finally:
        if page is not None:
            page.close()
        server.stop()
