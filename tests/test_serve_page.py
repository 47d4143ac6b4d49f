"""The page at / in a real headless browser (Debian's chromium driven by Playwright) against a real
`stylerun serve` on 127.0.0.1: upload a photo and a painting, start, watch the preview change, download.

Set STYLERUN_SCREENSHOT=FILE to keep the screenshot taken after the run (tools/serve_screenshot.py
makes the docs' picture of the page with a larger job).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import serve, stop, wait_for
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Debian's chromium, headless, and never reaching out to the network on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no chromium (apt-get install chromium)")

#: The SHA-256 of the preview image's bytes as the page holds them (its blob URL), with its iteration.
PREVIEW_DIGEST = """async () => {
  const img = document.getElementById("preview");
  const bytes = await (await fetch(img.src)).arrayBuffer();
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [Number(img.dataset.iteration), Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("")];
}"""


def small(source: Path, target: Path, side: int) -> Path:
    image = Image.open(source).convert("RGB")
    image.thumbnail((side, side))
    image.save(target, "PNG")
    return target


def fill_job(page, content: Path, style: Path, size: int, iterations: int) -> None:
    """Choose the two images and the options the way a user does (threads in the advanced section)."""
    page.set_input_files("#content-input", str(content))
    page.set_input_files("#style-input", str(style))
    page.fill("#opt-size", str(size))
    page.fill("#opt-iterations", str(iterations))
    page.locator("#opt-style_strength").fill("0.7")
    page.click("#advanced summary")
    page.fill("#opt-threads", "1")


def watch_preview_change(page, timeout: float = 120.0) -> tuple[tuple, tuple]:
    """Two moments of the live preview: the first image, then a later one with other bytes."""
    page.wait_for_selector("#preview[data-iteration]", state="attached", timeout=timeout * 1000)
    first = page.evaluate(PREVIEW_DIGEST)

    def changed():  # the server rewrites the preview every few iterations, not each one
        later = page.evaluate(PREVIEW_DIGEST)
        return later if later[1] != first[1] else None

    return first, wait_for(changed, timeout, what=f"the preview's bytes to change after iteration {first[0]}")


def test_page_paints_watches_and_downloads(tmp_path):
    proc, url = serve(tmp_path / "data")
    content = small(EXAMPLES / "chelsea.jpg", tmp_path / "photo.png", 48)
    style = small(EXAMPLES / "starry_night.jpg", tmp_path / "painting.png", 48)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.wait_for_selector("body[data-ready]")
            assert page.locator("#advanced-options fieldset").count() >= 3  # built from /api/options
            assert "worker thread in this process" in page.text_content("#runs-on")  # from /api/health
            fill_job(page, content, style, 48, 40)
            page.click("#start")
            first, later = watch_preview_change(page)
            assert later[0] > first[0], (first, later)
            page.wait_for_selector("#download:not([hidden])", timeout=180_000)
            assert page.text_content("#job-status") == "done"
            assert page.locator("#loss-plot polyline").count() == 1
            with page.expect_download() as download:
                page.click("#download")
            saved = tmp_path / "downloaded.png"
            download.value.save_as(saved)
            page.wait_for_selector("#gallery .tile .badge.done")
            page.screenshot(path=os.environ.get("STYLERUN_SCREENSHOT", str(tmp_path / "page.png")), full_page=True)
            browser.close()
        assert not errors, errors
    finally:
        stop(proc)
    with Image.open(saved) as image:
        assert image.format == "PNG" and max(image.size) == 48 and image.size == Image.open(content).size


def test_page_asks_for_the_token_and_sends_it(tmp_path):
    proc, url = serve(tmp_path / "data", token="s3cret-s3cret-s3cret")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#token-dialog[open]")
            page.fill("#token-input", "s3cret-s3cret-s3cret")
            page.click("#token-ok")
            page.wait_for_selector("body[data-ready]", timeout=30_000)
            assert page.locator("#opt-iterations").count() == 1
            browser.close()
    finally:
        stop(proc)
